"""Image commands of pinnace side by side with Podman on the same machine (medians of N runs).

    python bench/images_bench.py [--reps 5] [--json out.json] [--only pinnace|podman]

Run it as the (unprivileged) user whose rootless performance matters; bench/run sets that up.
Operations: `--version`, cold pull of the debian fixture (store emptied before every run), warm
pull (image already present), and `images` with the debian and busybox images present. Every tool
gets an isolated store, side by side in one temporary directory (`--root/--runroot` for both; Podman
keeps the user's configuration), reset (`system reset -f`) before every cold pull and at the end. Nothing is asserted: this prints numbers and
the ratio pinnace/podman (< 1 means pinnace is faster).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SETTLE_SECONDS = 31  # see Tool.reset_and_settle

OPS = ("version", "pull_cold", "pull_warm", "images")
LABELS = {
    "version": "--version",
    "pull_cold": "pull debian (cold, empty store)",
    "pull_warm": "pull debian (warm, present)",
    "images": "images (debian + busybox)",
}


class CommandFailed(Exception):
    pass


@dataclass
class Tool:
    """One engine under test: how to call it, reset its store and clean up."""

    name: str
    argv: list[str]                      # command prefix, including store options
    env: dict[str, str]
    bare: list[str] = field(default_factory=list)  # the command alone: `--version` as users type it
    samples: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    settle: float = SETTLE_SECONDS

    def run(self, *args: str, timeout: float = 900, bare: bool = False) -> float:
        """Run one command, return its wall-clock seconds; raise CommandFailed on non-zero exit."""
        prefix = self.bare if bare and self.bare else self.argv
        t0 = time.perf_counter()
        proc = subprocess.run([*prefix, *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise CommandFailed(f"{self.name} {' '.join(args)} exited {proc.returncode}: "
                                f"{(proc.stderr or proc.stdout).strip()[-500:]}")
        return elapsed

    def output(self, *args: str, bare: bool = False) -> str:
        prefix = self.bare if bare and self.bare else self.argv
        proc = subprocess.run([*prefix, *args], capture_output=True, text=True, env=self.env,
                              timeout=120, stdin=subprocess.DEVNULL)
        return proc.stdout.strip() if proc.returncode == 0 else f"(exit {proc.returncode})"

    def reset(self) -> None:
        self.run("system", "reset", "--force")
        # flush the deleted store's writeback now, not during the next timed command
        os.sync()

    def reset_and_settle(self) -> None:
        """Reset, then wait out ext4's inode reuse delay. ext4 will not reuse an inode freed in the last
        30 s and scans past each one (fs/ext4/ialloc.c, recently_deleted()): right after a store of 7,000
        files is deleted, creating a file costs ~1 ms instead of ~40 us, for whichever tool runs next."""
        self.reset()
        time.sleep(self.settle)

    def median(self, op: str) -> float | None:
        s = self.samples.get(op)
        return statistics.median(s) if s else None


def pinnace_tool(cmd: list[str], workdir: Path) -> Tool:
    root, runroot = workdir / "pinnace-root", workdir / "pinnace-run"
    root.mkdir(parents=True, exist_ok=True)
    runroot.mkdir(parents=True, exist_ok=True)
    return Tool("pinnace", [*cmd, "--root", str(root), "--runroot", str(runroot)], dict(os.environ), list(cmd))


def podman_tool(cmd: list[str], workdir: Path) -> Tool:
    # the user's configuration (bench/run writes containers.conf, storage.conf, registries.conf), but the
    # store beside pinnace's in the same directory: on this VM's ext4, inode creation costs 50 us in one
    # directory and 1 ms in another (e.g. the home directory), so both stores must live side by side
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERS_")}
    return Tool("podman", [*cmd, "--root", str(workdir / "podman-root"), "--runroot", str(workdir / "podman-run")],
                env, list(cmd))


def measure(tools: list[Tool], reps: int, image: str, small: str, pull_opts: list[str], log) -> None:
    """Run every operation `reps` times per tool, interleaving the tools (and alternating which goes
    first) so that load from elsewhere on the machine hits both alike."""
    def sample(tool: Tool, op: str, *args: str, before=None, bare: bool = False) -> float | None:
        if op in tool.errors:
            return None
        try:
            if before:
                before()
            elapsed = tool.run(*args, bare=bare)
        except (CommandFailed, subprocess.TimeoutExpired) as exc:
            tool.errors[op] = str(exc)
            log(f"  {tool.name}: {op} failed: {exc}")
            return None
        tool.samples.setdefault(op, []).append(elapsed)
        return elapsed

    def each_rep(label: str, op: str, *args: str, reset: bool = False, bare: bool = False) -> None:
        log(f"{label} ×{reps}")
        for i in range(reps):
            order = tools if i % 2 == 0 else tools[::-1]
            times = []
            for tool in order:
                t = sample(tool, op, *args, before=tool.reset_and_settle if reset else None, bare=bare)
                times.append(f"{tool.name} {t:.3f} s" if t is not None else f"{tool.name} failed")
            log(f"  run {i + 1}: " + ", ".join(times))

    each_rep("--version", "version", "--version", bare=True)
    each_rep(f"cold pull of {image} (store reset before each)", "pull_cold", "pull", "-q", *pull_opts, image,
             reset=True)
    for tool in tools:  # the warm runs need the image, however the cold ones went
        if not tool.samples.get("pull_cold"):
            sample(tool, "pull_warm_setup", "pull", "-q", *pull_opts, image)
    each_rep("warm pull", "pull_warm", "pull", "-q", *pull_opts, image)
    for tool in tools:
        sample(tool, "pull_small", "pull", "-q", *pull_opts, small)
    each_rep("images (debian + busybox present)", "images", "images")


def machine_facts(podman: Tool | None, pinnace: Tool | None) -> dict:
    def first_line(path: str, prefix: str = "") -> str:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(prefix):
                    return line.split(":", 1)[-1].strip() if prefix else line.strip()
        except OSError:
            pass
        return "?"

    mem_kb = first_line("/proc/meminfo", "MemTotal").split()[0]
    return {
        "nproc": os.cpu_count(),
        "cpu": first_line("/proc/cpuinfo", "model name"),
        "mem_gib": round(int(mem_kb) / 1048576, 1) if mem_kb.isdigit() else None,
        "kernel": platform.release(),
        "os": first_line("/etc/os-release", "PRETTY_NAME").split("=", 1)[-1].strip('"'),
        "python": platform.python_version(),
        "user": f"{os.getuid()}",
        "podman": podman.output("--version", bare=True) if podman else None,
        "pinnace": pinnace.output("--version", bare=True) if pinnace else None,
    }


def report(tools: list[Tool], reps: int, facts: dict, label: str = "") -> dict:
    by = {t.name: t for t in tools}
    results = {}
    for op in OPS:
        entry = {}
        for t in tools:
            entry[t.name] = {"median_s": t.median(op), "samples_s": t.samples.get(op, []),
                             "error": t.errors.get(op)}
        a, b = (by.get("pinnace"), by.get("podman"))
        ma, mb = (a.median(op) if a else None), (b.median(op) if b else None)
        entry["ratio_pinnace_podman"] = round(ma / mb, 3) if ma and mb else None
        results[op] = entry
    return {"benchmark": "images", "label": label, "reps": reps, "machine": facts, "results": results,
            "setup_errors": {t.name: {k: v for k, v in t.errors.items() if k not in OPS} for t in tools}}


def print_table(data: dict) -> None:
    m = data["machine"]
    if data.get("label"):
        print(f"\n== {data['label']}")
    print(f"\nmachine: {m['nproc']} cpus ({m['cpu']}), {m['mem_gib']} GiB, kernel {m['kernel']}, {m['os']}")
    print(f"podman: {m['podman']}   pinnace: {m['pinnace']}   reps: {data['reps']} (medians, seconds)\n")

    def cell(entry: dict) -> str:
        if entry["error"]:
            return "error"
        return f"{entry['median_s']:.3f}" if entry["median_s"] is not None else "-"

    header = f"{'operation':<34} {'pinnace':>9} {'podman':>9} {'pinnace/podman':>15}"
    print(header)
    print("-" * len(header))
    for op, entry in data["results"].items():
        p = cell(entry["pinnace"]) if "pinnace" in entry else "-"
        q = cell(entry["podman"]) if "podman" in entry else "-"
        r = f"{entry['ratio_pinnace_podman']:.2f}" if entry["ratio_pinnace_podman"] else "-"
        print(f"{LABELS[op]:<34} {p:>9} {q:>9} {r:>15}")


def cleanup_pinnace(tool: Tool, workdir: Path, log) -> None:
    try:
        tool.reset()
    except (CommandFailed, subprocess.TimeoutExpired) as exc:
        log(f"pinnace: system reset failed: {exc}")
    try:  # the namespace holder of this store (its pid file, as the tests' conftest knows it)
        os.kill(int((workdir / "pinnace-run" / "holder.pid").read_text().split()[0]), signal.SIGKILL)
    except (OSError, ValueError):
        pass
    shutil.rmtree(workdir, ignore_errors=True)
    if workdir.exists():
        log(f"pinnace: could not remove all of {workdir} (files owned by subordinate ids?)")


def common_arguments(ap: argparse.ArgumentParser, reps: int) -> None:
    """The options both benches take."""
    here = Path(sys.executable).with_name("pinnace")
    ap.add_argument("--reps", type=int, default=reps)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--only", choices=("pinnace", "podman"))
    ap.add_argument("--pinnace", default=str(here), help=f"pinnace command (default {here})")
    ap.add_argument("--podman", default="podman")
    ap.add_argument("--registry", default=os.environ.get("PINNACE_TEST_REGISTRY", "127.0.0.1:5000"))
    ap.add_argument("--workdir", type=Path, help="where the temporary stores go (default: $TMPDIR)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(ap, reps=5)
    ap.add_argument("--settle", type=float, default=SETTLE_SECONDS,
                    help=f"seconds to wait after each reset before a cold pull (default {SETTLE_SECONDS})")
    ap.add_argument("--label", default="", help="a line printed above the table (where the stores are)")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be >= 1")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    image = f"{args.registry}/fixtures/debian:latest"
    small = f"{args.registry}/fixtures/busybox:latest"
    pull_opts = ["--tls-verify=false"]  # plain-HTTP fixture registry, same flag for both engines

    tools: list[Tool] = []
    workdir = Path(tempfile.mkdtemp(prefix="pb-", dir=args.workdir))  # short: podman wants runroot < 50 chars
    if args.only != "podman":
        if not shutil.which(args.pinnace):
            ap.error(f"pinnace command not found: {args.pinnace}")
        tools.append(pinnace_tool(args.pinnace.split(), workdir))
    if args.only != "pinnace":
        if not shutil.which(args.podman):
            ap.error(f"podman not found: {args.podman} (bench/run installs it)")
        tools.append(podman_tool(args.podman.split(), workdir))

    for t in tools:
        t.settle = args.settle
    by = {t.name: t for t in tools}
    facts = machine_facts(by.get("podman"), by.get("pinnace"))
    t0 = time.perf_counter()
    try:
        measure(tools, args.reps, image, small, pull_opts, log)
        log(f"measured in {time.perf_counter() - t0:.1f} s")
    finally:
        if "podman" in by:
            try:
                by["podman"].reset()
            except (CommandFailed, subprocess.TimeoutExpired) as exc:
                log(f"podman: system reset failed: {exc}")
        if "pinnace" in by:
            cleanup_pinnace(by["pinnace"], workdir, log)
        shutil.rmtree(workdir, ignore_errors=True)

    data = report(tools, args.reps, facts, args.label)
    print_table(data)
    return publish(data, args.json, tools)


def publish(data: dict, json_path: Path | None, tools: list[Tool]) -> int:
    """Write the JSON results; exit status 1 if any operation failed (both benches end this way)."""
    if json_path:
        json_path.write_text(json.dumps(data, indent=2) + "\n")
        print(f"\nwritten: {json_path}")
    failed = {t.name: sorted(t.errors) for t in tools if t.errors}
    if failed:
        print(f"\nfailed operations: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
