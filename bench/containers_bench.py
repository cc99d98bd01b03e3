"""Container commands of pinnace side by side with Podman on the same machine (medians of N runs).

    python bench/containers_bench.py [--reps 10] [--json out.json] [--only pinnace|podman] [--workdir DIR]

Run it as the (unprivileged) user whose rootless performance matters; bench/run sets that up. Both engines
get an isolated store side by side in one temporary directory (as in images_bench.py) and pull the busybox
fixture first. Operations, every one with `--network none`, the tools interleaved rep by rep (alternating
which goes first):
  run --rm IMAGE true (after one untimed warm-up run per tool); exec CTR true against a `run -d … sleep
  1000` container; ps and ps -a with 20 running containers; run -d … sleep 1000, then stop -t 0 (timed
  separately); supervisor memory per idle container (pinnace's top-level `__supervise` processes, Podman's
  conmon; RSS and PSS from /proc/PID/smaps_rollup, mean over the 20); inside a `run --rm` container, a
  256 MiB file written with fsync and 5,000 small files created, next to the same commands run on the host
  in the same directory as the stores (the container times include starting and removing the container:
  compare with the `run --rm true` row; Podman mounts the overlay of a --rm container with fsync=volatile,
  the table says which engine does).
Containers are removed between sections. Nothing is asserted: this prints medians, minimums and the ratio
pinnace/podman (< 1 means pinnace is faster).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from images_bench import (CommandFailed, Tool, common_arguments, machine_facts, pinnace_tool,  # noqa: E402
                          podman_tool, publish)

IDLE_CONTAINERS = 20
IDLE_SETTLE_SECONDS = 2.0  # let the supervisors finish starting up before their memory is read
LABELS = {
    "run_rm": "run --rm true",
    "exec": "exec CTR true",
    "ps": f"ps ({IDLE_CONTAINERS} running)",
    "ps_a": f"ps -a ({IDLE_CONTAINERS} running)",
    "run_d": "run -d sleep 1000",
    "stop": "stop -t 0",
    "write_big": "256 MiB dd conv=fsync (run --rm)",
    "small_files": "5,000 small files (run --rm)",
}
HOST_OPS = ("write_big", "small_files")
DD = "dd if=/dev/zero of={dir}/big bs=1M count=256 conv=fsync"
SMALL = "mkdir {dir}/d; cd {dir}/d; i=0; while [ $i -lt 5000 ]; do echo x > f$i; i=$((i+1)); done"

Log = Callable[[str], None]
ArgsFor = Callable[[Tool], "list[str] | None"]


def timed(tool: Tool, *args: str, timeout: float = 600) -> tuple[float, str]:
    """Run one command (the tool's prefix + args): wall-clock seconds and stdout; CommandFailed if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run([*tool.argv, *args], capture_output=True, text=True, env=tool.env,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise CommandFailed(f"{tool.name} {' '.join(args)} exited {proc.returncode}: "
                            f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    return elapsed, proc.stdout.strip()


class Bench:
    """The engines (and the host, for the filesystem baseline) and what was measured."""

    def __init__(self, tools: list[Tool], host: Tool, image: str, reps: int, log: Log) -> None:
        self.tools, self.host, self.image, self.reps, self.log = tools, host, image, reps, log
        self.memory: dict[str, dict] = {}
        self.root_mounts: dict[str, str | None] = {}  # the /proc/mounts line of `/` in a run --rm container

    def sample(self, tool: Tool, op: str, *args: str, record: bool = True) -> str | None:
        """Run and (if `record`) keep the time; on failure note the error for `op` and return None."""
        if op in tool.errors:
            return None
        try:
            elapsed, out = timed(tool, *args)
        except (CommandFailed, subprocess.TimeoutExpired) as exc:
            tool.errors[op] = str(exc)
            self.log(f"  {tool.name}: {op} failed: {exc}")
            return None
        if record:
            tool.samples.setdefault(op, []).append(elapsed)
        return out

    def each_rep(self, op: str, args_for: ArgsFor, tools: list[Tool] | None = None,
                 after: Callable[[Tool], None] | None = None) -> None:
        tools = tools or self.tools
        self.log(f"{LABELS[op]} ×{self.reps}")
        for i in range(self.reps):
            times = []
            for tool in tools if i % 2 == 0 else tools[::-1]:
                args = args_for(tool)
                ok = args is not None and self.sample(tool, op, *args) is not None
                times.append(f"{tool.name} {tool.samples[op][-1]:.3f} s" if ok else f"{tool.name} failed")
                if after:
                    after(tool)
            self.log(f"  run {i + 1}: " + ", ".join(times))

    def detached(self, tool: Tool, op: str, *cmd: str) -> str | None:
        """`run -d --network none IMAGE cmd…` untimed; the container id, or None."""
        out = self.sample(tool, op, "run", "-d", "--network", "none", self.image, *cmd, record=False)
        return out.splitlines()[-1].strip() if out else None

    def remove_all(self, tool: Tool) -> None:
        try:
            if tool.name == "podman":
                timed(tool, "rm", "-af", "-t", "0")
            else:
                _, ids = timed(tool, "ps", "-aq")
                if ids.split():
                    timed(tool, "rm", "-f", *ids.split())
        except (CommandFailed, subprocess.TimeoutExpired) as exc:
            self.log(f"  {tool.name}: removing the containers failed: {exc}")

    # ---- the sections

    def run_rm(self) -> None:
        for tool in self.tools:  # first start: namespace holder / pause process, caches
            self.sample(tool, "run_rm_warmup", "run", "--rm", "--network", "none", self.image, "true", record=False)
        self.each_rep("run_rm", lambda t: ["run", "--rm", "--network", "none", self.image, "true"])

    def exec(self) -> None:
        ids = {t.name: self.detached(t, "exec_setup", "sleep", "1000") for t in self.tools}
        self.each_rep("exec", lambda t: ["exec", ids[t.name], "true"] if ids[t.name] else None)
        for t in self.tools:
            self.remove_all(t)

    def ps_and_memory(self, store_root: Callable[[Tool], str]) -> None:
        self.log(f"starting {IDLE_CONTAINERS} idle containers per tool")
        for _ in range(IDLE_CONTAINERS):
            for t in self.tools:
                self.detached(t, "ps_setup", "sleep", "1000")
        time.sleep(IDLE_SETTLE_SECONDS)
        for t in self.tools:
            self.memory[t.name] = supervisor_memory(t.name, store_root(t))
            m = self.memory[t.name]
            self.log(f"  {t.name}: {m['count']} supervisors, mean RSS {m['rss_kib_mean']} KiB, "
                     f"PSS {m['pss_kib_mean']} KiB")
        self.each_rep("ps", lambda t: ["ps"])
        self.each_rep("ps_a", lambda t: ["ps", "-a"])
        for t in self.tools:
            self.remove_all(t)

    def run_then_stop(self) -> None:
        self.log(f"{LABELS['run_d']}, then {LABELS['stop']} ×{self.reps}")
        for i in range(self.reps):
            times = []
            for tool in self.tools if i % 2 == 0 else self.tools[::-1]:
                out = self.sample(tool, "run_d", "run", "-d", "--network", "none", self.image, "sleep", "1000")
                cid = out.splitlines()[-1].strip() if out else None
                stopped = cid is not None and self.sample(tool, "stop", "stop", "-t", "0", cid) is not None
                times.append(f"{tool.name} " + (f"{tool.samples['run_d'][-1]:.3f} s + " if cid else "failed + ")
                             + (f"{tool.samples['stop'][-1]:.3f} s" if stopped else "failed"))
                self.remove_all(tool)
            self.log(f"  run {i + 1}: " + ", ".join(times))

    def io(self, host_dir: Path) -> None:
        host_dir.mkdir(parents=True, exist_ok=True)
        for tool in self.tools:  # Podman mounts a --rm container's overlay with fsync=volatile: fsync is a no-op
            out = self.sample(tool, "root_mount", "run", "--rm", "--network", "none", self.image,
                              "head", "-n", "1", "/proc/mounts", record=False)
            self.root_mounts[tool.name] = out.splitlines()[0] if out else None
        every = [*self.tools, self.host]

        def clean_host(tool: Tool) -> None:
            if tool is self.host:
                shutil.rmtree(host_dir / "d", ignore_errors=True)
                (host_dir / "big").unlink(missing_ok=True)

        def args_for(cmd: str) -> ArgsFor:
            def args(tool: Tool) -> list[str]:
                if tool is self.host:
                    return ["sh", "-c", cmd.format(dir=host_dir)]
                return ["run", "--rm", "--network", "none", self.image, "sh", "-c", cmd.format(dir="")]
            return args

        self.each_rep("write_big", args_for(DD), every, after=clean_host)
        self.each_rep("small_files", args_for(SMALL), every, after=clean_host)


# ---- supervisor memory

def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return None


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process from /proc/PID/stat (the comm may contain spaces and parentheses)."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    return fields[0], int(fields[1])


def supervisor_memory(engine: str, store_root: str) -> dict:
    """Mean RSS and PSS of the per-container supervisors of one store: processes whose argv names the store
    (conmon's bundle path, `__supervise`'s bundle argument) and carries the engine's role marker, whose
    parent is not such a process itself (the top of each detached chain), and that are not zombies."""
    def is_supervisor(pid: int) -> bool:
        argv = (_read(f"/proc/{pid}/cmdline") or "").split("\0")
        if store_root not in " ".join(argv):
            return False
        if engine == "podman":
            return os.path.basename(argv[0]) == "conmon"
        return "__supervise" in argv

    found: list[dict] = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or not is_supervisor(pid := int(name)):
            continue
        st = _stat(pid)
        if st is None or st[0] in ("Z", "X") or is_supervisor(st[1]):
            continue
        rollup = _read(f"/proc/{pid}/smaps_rollup") or ""
        kib = {}
        for line in rollup.splitlines():
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss") and rest.split():
                kib[key] = int(rest.split()[0])
        if len(kib) == 2:
            found.append({"pid": pid, "rss_kib": kib["Rss"], "pss_kib": kib["Pss"]})
    mean = (lambda k: round(statistics.mean(p[k] for p in found)) if found else None)
    return {"count": len(found), "rss_kib_mean": mean("rss_kib"), "pss_kib_mean": mean("pss_kib"),
            "processes": found, "marker": "conmon" if engine == "podman" else "__supervise"}


# ---- results

def summary(tool: Tool, op: str) -> dict:
    s = tool.samples.get(op, [])
    return {"median_s": statistics.median(s) if s else None, "min_s": min(s) if s else None,
            "samples_s": s, "error": tool.errors.get(op)}


def report(bench: Bench, facts: dict, label: str) -> dict:
    by = {t.name: t for t in bench.tools}
    results = {}
    for op in LABELS:
        entry = {t.name: summary(t, op) for t in bench.tools}
        if op in HOST_OPS:
            entry["host"] = summary(bench.host, op)
        a, b = (entry.get("pinnace", {}).get("median_s"), entry.get("podman", {}).get("median_s"))
        entry["ratio_pinnace_podman"] = round(a / b, 3) if a and b else None
        results[op] = entry
    mem = dict(bench.memory)
    a, b = mem.get("pinnace", {}), mem.get("podman", {})
    for k in ("rss_kib_mean", "pss_kib_mean"):
        mem[f"ratio_{k}"] = round(a[k] / b[k], 3) if a.get(k) and b.get(k) else None
    setup = {name: {k: v for k, v in t.errors.items() if k not in LABELS} for name, t in by.items()}
    return {"benchmark": "containers", "label": label, "reps": bench.reps, "image": bench.image,
            "machine": facts, "results": results, "supervisor_memory": mem,
            "run_rm_root_mount": bench.root_mounts, "setup_errors": setup}


def print_table(data: dict) -> None:
    m = data["machine"]
    if data.get("label"):
        print(f"\n== {data['label']}")
    print(f"\nmachine: {m['nproc']} cpus ({m['cpu']}), {m['mem_gib']} GiB, kernel {m['kernel']}, {m['os']}")
    print(f"podman: {m['podman']}   pinnace: {m['pinnace']}   reps: {data['reps']} "
          "(median (min), seconds)\n")

    def cell(entry: dict | None) -> str:
        if not entry:
            return "-"
        if entry["error"]:
            return "error"
        return f"{entry['median_s']:.3f} ({entry['min_s']:.3f})" if entry["median_s"] is not None else "-"

    header = f"{'operation':<34} {'pinnace':>15} {'podman':>15} {'pinnace/podman':>15} {'host':>15}"
    print(header)
    print("-" * len(header))
    for op, entry in data["results"].items():
        r = f"{entry['ratio_pinnace_podman']:.2f}" if entry["ratio_pinnace_podman"] else "-"
        host = cell(entry["host"]) if "host" in entry else ""
        print(f"{LABELS[op]:<34} {cell(entry.get('pinnace')):>15} {cell(entry.get('podman')):>15} {r:>15} {host:>15}")

    for eng, line in data["run_rm_root_mount"].items():
        if line:
            opts = line.split()[3].split(",") if len(line.split()) > 3 else []
            sync = "fsync is a no-op (volatile)" if any("volatile" in o for o in opts) else "fsync reaches the disk"
            print(f"  {eng}: the root of a run --rm container is {line.split()[2]}; {sync}")

    mem = data["supervisor_memory"]
    print(f"\nsupervisor memory per idle container (mean over the {IDLE_CONTAINERS}, MiB; pinnace __supervise, "
          "podman conmon)")
    for k, name in (("rss_kib_mean", "RSS"), ("pss_kib_mean", "PSS")):
        vals = []
        for eng in ("pinnace", "podman"):
            e = mem.get(eng)
            vals.append(f"{e[k] / 1024:.2f} (n={e['count']})" if e and e.get(k) else "-")
        r = f"{mem[f'ratio_{k}']:.2f}" if mem.get(f"ratio_{k}") else "-"
        print(f"{name:<34} {vals[0]:>15} {vals[1]:>15} {r:>15}")


def clean_up(bench: Bench, by: dict, workdir: Path, log: Log) -> None:
    """After a bench: both engines' containers and stores gone, the work directory removed."""
    if "podman" in by:
        bench.remove_all(by["podman"])
        try:
            by["podman"].reset()
        except (CommandFailed, subprocess.TimeoutExpired) as exc:
            log(f"podman: system reset failed: {exc}")
    if "pinnace" in by:
        cleanup_pinnace(bench, by["pinnace"], workdir / "pinnace-run")
    shutil.rmtree(workdir, ignore_errors=True)
    if workdir.exists():
        log(f"could not remove all of {workdir} (files owned by subordinate ids?)")


def cleanup_pinnace(bench: Bench, tool: Tool, runroot: Path) -> None:
    bench.remove_all(tool)
    try:
        tool.reset()
    except (CommandFailed, subprocess.TimeoutExpired) as exc:
        bench.log(f"pinnace: system reset failed: {exc}")
    try:  # the namespace holder of this store, if reset left it (checked by name: pids are reused)
        pid = int((runroot / "holder.pid").read_text().split()[0])
        if (_read(f"/proc/{pid}/comm") or "").strip() == "pinnace-holder":
            os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(ap, reps=10)
    ap.add_argument("--label", default="", help="a line printed above the table (where the stores are)")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be >= 1")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    image = f"{args.registry}/fixtures/busybox:latest"
    workdir = Path(tempfile.mkdtemp(prefix="pc-", dir=args.workdir))  # short: podman wants runroot < 50 chars
    tools: list[Tool] = []
    if args.only != "podman":
        if not shutil.which(args.pinnace.split()[0]):
            ap.error(f"pinnace command not found: {args.pinnace}")
        tools.append(pinnace_tool(args.pinnace.split(), workdir))
    if args.only != "pinnace":
        if not shutil.which(args.podman.split()[0]):
            ap.error(f"podman not found: {args.podman} (bench/run installs it)")
        tools.append(podman_tool(args.podman.split(), workdir))
    by = {t.name: t for t in tools}
    host = Tool("host", [], dict(os.environ))
    bench = Bench(tools, host, image, args.reps, log)
    facts = machine_facts(by.get("podman"), by.get("pinnace"))
    roots = {"pinnace": str(workdir / "pinnace-root"), "podman": str(workdir / "podman-root")}

    t0 = time.perf_counter()
    try:
        for t in tools:  # same flag for both engines: the fixture registry is plain HTTP
            bench.sample(t, "pull", "pull", "-q", "--tls-verify=false", image, record=False)
        bench.run_rm()
        bench.exec()
        bench.ps_and_memory(lambda t: roots[t.name])
        bench.run_then_stop()
        bench.io(workdir / "host-io")
        log(f"measured in {time.perf_counter() - t0:.1f} s")
    finally:
        clean_up(bench, by, workdir, log)

    data = report(bench, facts, args.label)
    print_table(data)
    return publish(data, args.json, tools)


if __name__ == "__main__":
    sys.exit(main())
