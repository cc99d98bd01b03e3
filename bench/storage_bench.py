"""pinnace's storage drivers (overlay, fuse, vfs) next to the host filesystem and Podman (fuse-overlayfs and
kernel overlay), filesystem operations inside a container (medians of N runs).

    python bench/storage_bench.py [--reps 3] [--json out.json] [--only pinnace|podman] [--workdir DIR]
                                  [--drivers overlay,fuse,vfs] [--settle S]

Rootless (bench/run sets it up). Every engine/driver gets a fresh store of its own, side by side in one
temporary directory: pinnace `--root/--runroot … --storage-driver D` per driver (a store records its driver);
Podman twice, with its rootless FUSE path (`overlay` driver, mount_program /usr/bin/fuse-overlayfs) and with
the kernel's overlayfs. Podman 4.3 ignores storage.conf's driver options once `--root` is given, so the
fuse-overlayfs store gets a storage.conf through CONTAINERS_STORAGE_CONF *and* `--storage-opt
overlay.mount_program=…`; the driver each store really uses is checked by the type of `/` in a container.

Per rep and per store, one `run --network none` container of the debian fixture (not `--rm`: Podman and
pinnace mount a --rm container's overlay with fsync=volatile) runs SCRIPT, which times each step inside the
container with `date +%s%N` (the container start is not in these numbers):
  find / -xdev | wc -l over the fresh container (the debian image's tree, through the driver);
  1 GiB sequential write: dd if=/dev/zero bs=1M count=1024 conv=fsync (fsync reaches the disk everywhere);
  read back, warm: dd of the same file right away (whatever each driver keeps in the page cache);
  read back, container cache dropped: `dd iflag=nocache count=0` (posix_fadvise DONTNEED, all a rootless
    user can do: drop_caches needs real root) then dd again. FUSE drivers then serve the read through their
    daemon from the host's page cache; kernel overlay, vfs and the host pass the drop down to the backing
    file, so theirs comes from the disk (on tmpfs: from memory);
  5,000 small files: seq 5000 | xargs touch in a new directory.
The host row runs the same script in a directory on the same filesystem as the stores, inside `pinnace
unshare` (root of the user namespace, so that find can enter every directory of the unpacked debian layer it
walks in the first pinnace store). Then container start: `run --rm --network none` busybox and debian `true`,
wall clock, after an untimed warm-up run each. Stores and tools interleave rep by rep (alternating order).
On a loop-mounted filesystem (bench/run's disk pass) the free space is written once first (see prefill).
Afterwards: no FUSE mount of the stores may remain in any of the user's mount namespaces (pinnace's namespace
holders, Podman's pause process) and no FUSE daemon process; both are checked and reported.
Nothing is asserted: medians, and the issue's targets for pinnace's fuse driver against fuse-overlayfs.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_bench import fs_type  # noqa: E402
from containers_bench import Bench, Log, _read, cleanup_pinnace, summary, timed  # noqa: E402
from images_bench import (CommandFailed, Tool, common_arguments, machine_facts, pinnace_tool,  # noqa: E402
                          podman_tool, publish)

DRIVERS = ("overlay", "fuse", "vfs")
FUSE_OVERLAYFS = "/usr/bin/fuse-overlayfs"
SIZE = 1 << 30
FILES = 5000
# store name → the filesystem type of `/` in its containers (None: vfs, a directory, any type but these)
EXPECTED_ROOT = {"pinnace-overlay": "overlay", "pinnace-fuse": "fuse.pinnace-overlay", "pinnace-vfs": None,
                 "podman-fuse-overlayfs": "fuse.fuse-overlayfs", "podman-overlay": "overlay"}
COLUMNS = ("host", "pinnace-overlay", "pinnace-fuse", "pinnace-vfs", "podman-fuse-overlayfs", "podman-overlay")
HEADS = (("", "host"), ("pinnace", "overlay"), ("pinnace", "fuse"), ("pinnace", "vfs"), ("podman", "fuse-ovlfs"),
         ("podman", "overlay"))
# op: (label, bytes moved (rate in MB/s) or None (seconds), the target for fuse/fuse-overlayfs)
OPS = {
    "write": ("1 GiB write, conv=fsync (MB/s)", SIZE, (">=", 0.5)),
    "read_warm": ("1 GiB read, warm (MB/s)", SIZE, (">=", 0.5)),
    "read_dropped": ("1 GiB read, cache dropped (MB/s)", SIZE, (">=", 0.5)),
    "small_files": ("5,000 small files (s)", None, ("<=", 2.0)),
    "find": ("find / -xdev, debian (s)", None, None),
    "start_busybox": ("run --rm busybox true (s)", None, None),
    "start_debian": ("run --rm debian true (s)", None, None),
}
IN_SCRIPT = ("find", "write", "read_warm", "read_dropped", "small_files")
SCRIPT = """set -e
t() {{ date +%s%N; }}
echo "mount $(head -n 1 /proc/mounts)"
a=$(t); n=$(find {root} -xdev | wc -l); b=$(t); echo "find $((b - a)) $n"
a=$(t); dd if=/dev/zero of={dir}/f bs=1M count=1024 conv=fsync 2>/dev/null; b=$(t); echo "write $((b - a))"
a=$(t); dd if={dir}/f of=/dev/null bs=1M 2>/dev/null; b=$(t); echo "read_warm $((b - a))"
dd if={dir}/f iflag=nocache count=0 2>/dev/null
a=$(t); dd if={dir}/f of=/dev/null bs=1M 2>/dev/null; b=$(t); echo "read_dropped $((b - a))"
mkdir {dir}/m; cd {dir}/m
a=$(t); seq 5000 | xargs touch; b=$(t); echo "small_files $((b - a))"
echo "check $(stat -c %s {dir}/f) $(ls | wc -l)"
"""
STORAGE_CONF = '[storage]\ndriver = "overlay"\n'
FUSE_CONF = STORAGE_CONF + f'[storage.options.overlay]\nmount_program = "{FUSE_OVERLAYFS}"\n'


def make_tools(args: argparse.Namespace, drivers: list[str], workdir: Path) -> list[Tool]:
    """One fresh store per pinnace driver and per Podman configuration, each in its own subdirectory."""
    tools = []
    if args.only != "podman":
        for d in drivers:
            t = pinnace_tool(args.pinnace.split(), workdir / d)
            t.name, t.argv = f"pinnace-{d}", [*t.argv, "--storage-driver", d]
            tools.append(t)
    if args.only != "pinnace":
        for sub, name, conf, opts in (
                ("fo", "podman-fuse-overlayfs", FUSE_CONF,
                 ["--storage-opt", f"overlay.mount_program={FUSE_OVERLAYFS}"]),
                ("ko", "podman-overlay", STORAGE_CONF, [])):
            t = podman_tool(args.podman.split(), workdir / sub)
            (workdir / sub).mkdir(parents=True, exist_ok=True)
            (workdir / sub / "storage.conf").write_text(conf)
            t.name, t.argv = name, [*t.argv, *opts]
            t.env["CONTAINERS_STORAGE_CONF"] = str(workdir / sub / "storage.conf")
            tools.append(t)
    return tools


def store_root(tool: Tool) -> Path:
    return Path(tool.argv[tool.argv.index("--root") + 1])


def chain_id(diff_ids: list[str]) -> str:
    """The OCI ChainID of a layer stack: pinnace's layers/ directory of the topmost layer."""
    chain = diff_ids[0]
    for d in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {d}".encode()).hexdigest()
    return chain.split(":", 1)[1]


class StorageBench(Bench):
    def __init__(self, tools: list[Tool], host: Tool | None, images: dict[str, str], reps: int, log: Log,
                 host_dir: Path, settle: float) -> None:
        super().__init__(tools, host or Tool("host", [], {}), images["debian"], reps, log)
        self.host_tool, self.images, self.host_dir, self.settle = host, images, host_dir, settle
        self.root_mounts: dict[str, str | None] = {}
        self.find_entries: dict[str, list[int]] = {}
        self.host_find_root: str | None = None

    def fail(self, tool: Tool, op: str, msg: str) -> None:  # None: what a failed measurement returns
        tool.errors[op] = msg
        self.log(f"  {tool.name}: {op} failed: {msg}")

    def prepare(self) -> None:
        """Pull both images, check each store's driver by the type of `/` in a container (also the untimed
        first start), and find the debian layer for the host's find."""
        for tool in self.tools:
            for name, ref in self.images.items():
                self.sample(tool, f"pull_{name}", "pull", "-q", "--tls-verify=false", ref, record=False)
            self.sample(tool, "start_warmup", "run", "--rm", "--network", "none", self.images["busybox"], "true",
                        record=False)
            out = self.sample(tool, "driver_check", "run", "--rm", "--network", "none", self.image, "head", "-n",
                              "1", "/proc/mounts", record=False)
            line = out.splitlines()[0] if out else None
            self.root_mounts[tool.name] = line
            kind, want = (line.split()[2] if line and len(line.split()) > 2 else None), EXPECTED_ROOT[tool.name]
            wrong = kind != want if want else kind in ("overlay", "fuse.pinnace-overlay", "fuse.fuse-overlayfs")
            if line and wrong:
                self.fail(tool, "driver_check", f"/ in its containers is {kind}, expected {want or 'a directory'}:"
                          f" {line}")
        pinnace = next((t for t in self.tools if t.name.startswith("pinnace-") and not t.errors), None)
        if self.host_tool is None or pinnace is None:
            return
        try:
            _, layers = timed(pinnace, "image", "inspect", "--format", "{{json .RootFS.Layers}}", self.image)
            self.host_find_root = str(store_root(pinnace) / "layers" / chain_id(json.loads(layers)))
        except (CommandFailed, subprocess.TimeoutExpired, ValueError, IndexError) as exc:
            self.fail(self.host_tool, "find", f"no debian layer directory in {store_root(pinnace)}: {exc}")

    def live(self) -> list[Tool]:
        """The stores to measure: those whose setup worked (a wrong driver measures nothing useful)."""
        return [t for t in self.tools if not any(k.startswith(("pull_", "driver_check")) for k in t.errors)]

    def in_container(self, tool: Tool) -> str:
        self.host_dir.mkdir(parents=True, exist_ok=True)
        try:
            if tool is self.host_tool:
                script = SCRIPT.format(root=self.host_find_root or "/nonexistent", dir=self.host_dir)
                return timed(tool, "sh", "-c", script)[1]
            return timed(tool, "run", "--network", "none", self.image, "sh", "-c", SCRIPT.format(root="/", dir=""))[1]
        finally:
            if tool is self.host_tool:
                shutil.rmtree(self.host_dir, ignore_errors=True)
            else:
                self.remove_all(tool)
            os.sync()  # this run's writeback (and the removal's) is not billed to the next store's run
            if self.settle:
                time.sleep(self.settle)

    def file_ops(self) -> None:
        every = [*self.live(), *([self.host_tool] if self.host_tool else [])]
        self.log(f"find, 1 GiB write + read, 5,000 files, in a debian container ×{self.reps}")
        for i in range(self.reps):
            shown = []
            for tool in every if i % 2 == 0 else every[::-1]:
                if any(op in tool.errors for op in IN_SCRIPT if op != "find" or tool is not self.host_tool):
                    continue
                try:
                    out = self.in_container(tool)
                except (CommandFailed, subprocess.TimeoutExpired) as exc:
                    for op in IN_SCRIPT:
                        self.fail(tool, op, str(exc))
                    continue
                got = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines() if len(ln.split()) >= 2}
                check = got.get("check", [])
                if check != [str(SIZE), str(FILES)]:
                    for op in IN_SCRIPT:
                        self.fail(tool, op, f"expected a {SIZE}-byte file and {FILES} files, got {check}: {out}")
                    continue
                for op in IN_SCRIPT:
                    if op == "find" and tool is self.host_tool and not self.host_find_root:
                        continue
                    tool.samples.setdefault(op, []).append(int(got[op][0]) / 1e9)
                self.find_entries.setdefault(tool.name, []).append(int(got["find"][1]))
                if tool is not self.host_tool:  # the measured container's root (the check ran with --rm)
                    self.root_mounts[tool.name] = " ".join(got["mount"])
                shown.append(f"{tool.name} " + " ".join(f"{op} {tool.samples[op][-1]:.3f}" for op in IN_SCRIPT
                                                        if tool.samples.get(op)))
            self.log(f"  run {i + 1}: " + "; ".join(shown))

    def starts(self) -> None:
        """Wall clock of `run --rm --network none IMAGE true` (the first, untimed start was in prepare)."""
        tools = self.live()
        for op, image in (("start_busybox", self.images["busybox"]), ("start_debian", self.image)):
            self.log(f"{OPS[op][0]} ×{self.reps}")
            for i in range(self.reps):
                shown = []
                for tool in tools if i % 2 == 0 else tools[::-1]:
                    ok = self.sample(tool, op, "run", "--rm", "--network", "none", image, "true") is not None
                    shown.append(f"{tool.name} " + (f"{tool.samples[op][-1]:.3f} s" if ok else "failed"))
                self.log(f"  run {i + 1}: " + ", ".join(shown))


def prefill(workdir: Path, log: Log) -> float | None:
    """Write the free space of a loop-mounted filesystem once, then free it: bench/run's disk pass uses a
    fresh ext4 in an image file (mkfs leaves it sparse), where the first write to each block also costs the
    host's filesystem an allocation; measured here, the first 1 GiB writes took 2.6-5 s against 0.43 s later,
    for whichever store came first. Nothing to do elsewhere (a real disk, a tmpfs). Seconds taken, or None."""
    if os.major(os.stat(workdir).st_dev) != 7:  # loop devices: block major 7
        return None
    st = os.statvfs(workdir)
    size, chunk = st.f_bavail * st.f_frsize - (256 << 20), bytes(8 << 20)
    t0, path = time.perf_counter(), workdir / "prefill"
    log(f"loop-mounted filesystem: writing its free space once ({size >> 20} MiB), untimed")
    try:
        with open(path, "wb") as f:
            for _ in range(max(size, 0) // len(chunk)):
                f.write(chunk)
            os.fsync(f.fileno())
    except OSError as exc:
        log(f"  prefill stopped: {exc}")
    path.unlink(missing_ok=True)
    os.sync()
    return time.perf_counter() - t0


def user_leftovers(workdir: Path) -> dict[str, list[str]]:
    """FUSE mounts under workdir in any mount namespace we can see (every process of this user: pinnace's
    holders, Podman's pause process, containers), and FUSE daemons of these stores still running."""
    mounts, daemons = set(), []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        for line in (_read(f"/proc/{name}/mounts") or "").splitlines():
            f = line.split()
            if len(f) > 2 and f[2].startswith("fuse") and str(workdir) in line:
                mounts.add(line)
        argv = (_read(f"/proc/{name}/cmdline") or "").split("\0")
        if str(workdir) in " ".join(argv) and ("__fuse-overlay" in argv or argv[0].endswith("fuse-overlayfs")):
            daemons.append(f"{name}: {' '.join(argv)[:300]}")
    return {"fuse_mounts": sorted(mounts), "fuse_daemons": daemons}


def wait_leftovers(workdir: Path, seconds: float = 5.0) -> dict[str, list[str]]:
    """Daemons end shortly after their unmount: look again for a few seconds before reporting them."""
    for _ in range(int(seconds / 0.25)):
        found = user_leftovers(workdir)
        if not any(found.values()):
            break
        time.sleep(0.25)
    return found


def report(bench: StorageBench, tools: list[Tool], facts: dict, label: str, fs: str, leftovers: dict) -> dict:
    results = {}
    for op, (_, quantity, target) in OPS.items():
        entry: dict = {}
        for t in tools:
            entry[t.name] = e = summary(t, op)
            if quantity and e["median_s"]:
                e["median_mb_s"], e["best_mb_s"] = quantity / 1e6 / e["median_s"], quantity / 1e6 / e["min_s"]
        a, b = entry.get("pinnace-fuse", {}).get("median_s"), entry.get("podman-fuse-overlayfs", {}).get("median_s")
        ratio = (b / a if quantity else a / b) if a and b else None  # rates for throughput, times otherwise
        entry["ratio_fuse_fuse_overlayfs"] = round(ratio, 3) if ratio else None
        entry["target"] = target
        entry["target_met"] = None if ratio is None or target is None else \
            (ratio >= target[1] if target[0] == ">=" else ratio <= target[1])
        results[op] = entry
    return {"benchmark": "storage", "label": label, "reps": bench.reps, "image": bench.image, "stores_fs": fs,
            "script": SCRIPT, "size_bytes": SIZE, "files": FILES, "machine": facts, "results": results,
            "root_mounts": bench.root_mounts, "find_entries": bench.find_entries,
            "host_find_root": bench.host_find_root, "leftovers": leftovers,
            "setup_errors": {t.name: {k: v for k, v in t.errors.items() if k not in OPS} for t in tools}}


def print_table(data: dict) -> None:
    m = data["machine"]
    if data.get("label"):
        print(f"\n== {data['label']}")
    print(f"\nmachine: {m['nproc']} cpus ({m['cpu']}), {m['mem_gib']} GiB, kernel {m['kernel']}, {m['os']}")
    print(f"podman: {m['podman']}   pinnace: {m['pinnace']}   stores on {data['stores_fs']}   reps: {data['reps']} "
          "(medians; MB/s = 10^6 bytes/s, higher is faster; s: lower is faster)")
    print("timed inside the container; fuse/f-o = pinnace fuse relative to fuse-overlayfs (rate ratio for MB/s, "
          "time ratio for s)\n")

    def cell(e: dict | None) -> str:
        if not e:
            return "-"
        if e["error"]:
            return "error"
        if e["median_s"] is None:
            return "-"
        return f"{e['median_mb_s']:.0f}" if "median_mb_s" in e else f"{e['median_s']:.3f}"

    width = 34
    print(f"{'':<{width}}" + "".join(f"{a:>11}" for a, _ in HEADS))
    print(header := f"{'operation':<{width}}" + "".join(f"{b:>11}" for _, b in HEADS) + f"{'fuse/f-o':>10}"
          + f"{'target':>9}")
    print("-" * len(header))
    for op, e in data["results"].items():
        r = f"{e['ratio_fuse_fuse_overlayfs']:.2f}" if e["ratio_fuse_fuse_overlayfs"] else "-"
        t = f"{'≥' if e['target'][0] == '>=' else '≤'} {e['target'][1]:.1f}" if e["target"] else ""
        if e["target_met"] is not None:
            t += " ok" if e["target_met"] else " NO"
        print(f"{OPS[op][0]:<{width}}" + "".join(f"{cell(e.get(c)):>11}" for c in COLUMNS) + f"{r:>10}{t:>9}")
    seen = {k: sorted(set(v)) for k, v in data["find_entries"].items()}
    print("\nentries find counts: " + ", ".join(f"{k} {'/'.join(map(str, v))}" for k, v in seen.items()))
    for name, line in data["root_mounts"].items():
        f = (line or "").split()
        if len(f) > 3:
            sync = "fsync=volatile" if "volatile" in f[3] else "fsync reaches the disk"
            print(f"  {name}: / is {f[2]} ({f[0]}), {sync}")
    left = {k: ("none" if not any(v.values()) else str(v)) for k, v in data["leftovers"].items()}
    print(f"leftover FUSE mounts / daemons after removing every container: {left.get('after_rm')}; "
          f"after the cleanup: {left.get('after_cleanup')}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(ap, reps=3)
    ap.add_argument("--label", default="", help="a line printed above the table (where the stores are)")
    ap.add_argument("--drivers", default=",".join(DRIVERS), help="pinnace drivers to measure (comma-separated)")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds to wait after each run's container is removed (ext4's inode reuse delay)")
    args = ap.parse_args(argv)
    drivers = [d for d in args.drivers.split(",") if d]
    if args.reps < 1:
        ap.error("--reps must be >= 1")
    if any(d not in DRIVERS for d in drivers):
        ap.error(f"--drivers: choose from {', '.join(DRIVERS)}")
    for name, cmd in (("pinnace", args.pinnace), ("podman", args.podman)):
        if args.only in (None, name) and not shutil.which(cmd.split()[0]):
            ap.error(f"{name} command not found: {cmd}")
    if args.only != "pinnace" and not os.access(FUSE_OVERLAYFS, os.X_OK):
        ap.error(f"{FUSE_OVERLAYFS} not found (Debian's fuse-overlayfs; bench/run installs it)")

    log: Log = functools.partial(print, file=sys.stderr, flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="ps-", dir=args.workdir))  # short: podman wants runroot < 50 chars
    fs = fs_type(workdir)
    tools = make_tools(args, drivers, workdir)
    first = tools[0] if tools else None
    host = Tool("host", [*first.argv, "unshare"], dict(first.env)) if first else None
    by = {t.name: t for t in tools}
    facts = machine_facts(next((t for t in tools if t.name.startswith("podman")), None),
                          next((t for t in tools if t.name.startswith("pinnace")), None))
    images = {name: f"{args.registry}/fixtures/{name}:latest" for name in ("busybox", "debian")}
    bench = StorageBench(tools, host, images, args.reps, log, workdir / "host", args.settle)
    leftovers: dict[str, dict] = {}
    prefilled: float | None = None
    log(f"stores on {fs} in {workdir}: {', '.join(by)}")
    t0 = time.perf_counter()
    try:
        prefilled = prefill(workdir, log)
        bench.prepare()
        bench.file_ops()
        bench.starts()
        log(f"measured in {time.perf_counter() - t0:.1f} s")
    finally:
        for t in tools:
            bench.remove_all(t)
        leftovers["after_rm"] = wait_leftovers(workdir)
        for t in tools:
            if t.name.startswith("podman"):
                try:
                    t.reset()
                except (CommandFailed, subprocess.TimeoutExpired) as exc:
                    log(f"{t.name}: system reset failed: {exc}")
            else:
                cleanup_pinnace(bench, t, store_root(t).parent / "pinnace-run")
        leftovers["after_cleanup"] = wait_leftovers(workdir)
        for when, found in leftovers.items():
            if any(found.values()):
                log(f"left over {when.replace('_', ' ')}: {found}")
        shutil.rmtree(workdir, ignore_errors=True)
        if workdir.exists():
            log(f"could not remove all of {workdir} (files owned by subordinate ids?)")

    every = [*tools, *([host] if host else [])]
    data = report(bench, every, facts, args.label, fs, leftovers)
    data["prefill_s"] = prefilled
    print_table(data)
    status = publish(data, args.json, every)
    if any(v for found in leftovers.values() for v in found.values()):
        print("\nFUSE mounts or daemons were left over (see above)", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
