"""The one-file executable (packaging/build → dist/pinnace) against the installed package and Podman.

    python bench/frozen_bench.py [--frozen dist/pinnace] [--reps 20] [--json out.json] [--workdir DIR]

Run it as the (unprivileged) user whose rootless performance matters; bench/run sets that up. Three
tools, each with its own store side by side in one temporary directory: `frozen` (the one file, unpacked
into a scratch cache of its own by an untimed first run, whose time is reported), `installed` (the
package's console script, --pinnace) and `podman`. Operations, the tools interleaved rep by rep
(rotating which goes first), after one untimed warm-up each: `--version`; `ps` (no containers);
`run --rm --network none busybox true`. Targets (issue 7): frozen ≤ 1.2 × installed and ≤ Podman.
Also reported: the one file's size and the newest glibc symbol version it needs
(packaging/glibc_report.py). Nothing is asserted: this prints medians and ratios (< 1: frozen is faster).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from images_bench import (CommandFailed, Tool, common_arguments, machine_facts, pinnace_tool,  # noqa: E402
                          podman_tool, publish)

OPS = ("version", "ps", "run_rm")
LABELS = {"version": "--version", "ps": "ps (no containers)", "run_rm": "run --rm --network none IMG true"}
TOOLS = ("frozen", "installed", "podman")


def frozen_tool(exe: str, workdir: Path) -> Tool:
    root, runroot, cache = workdir / "frozen-root", workdir / "frozen-run", workdir / "frozen-cache"
    for d in (root, runroot):
        d.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PINNACE_CACHE_DIR"] = str(cache)  # its first run unpacks here, timed apart
    return Tool("frozen", [exe, "--root", str(root), "--runroot", str(runroot)], env, [exe])


def args_for(op: str, image: str) -> tuple[list[str], bool]:
    """(arguments, bare): --version is typed without store options."""
    if op == "version":
        return ["--version"], True
    if op == "ps":
        return ["ps"], False
    return ["run", "--rm", "--network", "none", image, "true"], False


def measure(tools: list[Tool], reps: int, image: str, log) -> None:
    for op in OPS:
        args, bare = args_for(op, image)
        for tool in tools:  # warm-up: page cache, namespace holder, the store's database
            try:
                tool.run(*args, bare=bare)
            except (CommandFailed, subprocess.TimeoutExpired) as exc:
                tool.errors[op] = str(exc)
                log(f"  {tool.name}: {LABELS[op]} failed: {exc}")
        log(f"{LABELS[op]} ×{reps}")
        for i in range(reps):
            order = tools[i % len(tools):] + tools[:i % len(tools)]
            for tool in order:
                if op in tool.errors:
                    continue
                try:
                    tool.samples.setdefault(op, []).append(tool.run(*args, bare=bare))
                except (CommandFailed, subprocess.TimeoutExpired) as exc:
                    tool.errors[op] = str(exc)
                    log(f"  {tool.name}: {LABELS[op]} failed: {exc}")


def first_run(tool: Tool, log) -> float | None:
    """The one file's first start: unpacking into the empty cache (then --version)."""
    try:
        return tool.run("--version", bare=True)
    except (CommandFailed, subprocess.TimeoutExpired) as exc:
        tool.errors["first_run"] = str(exc)
        log(f"frozen: first run failed: {exc}")
        return None


def glibc_floor(exe: str) -> str | None:
    proc = subprocess.run([sys.executable, str(HERE.parent / "packaging" / "glibc_report.py"), "--newest", exe],
                          capture_output=True, text=True, timeout=300)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def report(tools: list[Tool], reps: int, facts: dict, label: str) -> dict:
    by = {t.name: t for t in tools}
    results = {}
    for op in OPS:
        entry = {name: {"median_s": t.median(op), "min_s": min(t.samples.get(op) or [0]) or None,
                        "samples_s": t.samples.get(op, []), "error": t.errors.get(op)}
                 for name, t in by.items()}
        med = {name: t.median(op) for name, t in by.items()}
        entry["ratio_frozen_installed"] = _ratio(med.get("frozen"), med.get("installed"))
        entry["ratio_frozen_podman"] = _ratio(med.get("frozen"), med.get("podman"))
        results[op] = entry
    return {"benchmark": "frozen", "label": label, "reps": reps, "machine": facts, "results": results,
            "setup_errors": {t.name: {k: v for k, v in t.errors.items() if k not in OPS} for t in tools}}


def print_table(data: dict) -> None:
    m, f = data["machine"], data["frozen"]
    if data.get("label"):
        print(f"\n== {data['label']}")
    print(f"\nmachine: {m['nproc']} cpus ({m['cpu']}), {m['mem_gib']} GiB, kernel {m['kernel']}, {m['os']}")
    print(f"podman: {m['podman']}   pinnace: {m['pinnace']}   reps: {data['reps']} (medians, milliseconds)")
    size = f"{f['size_bytes'] / 1048576:.1f} MiB" if f.get("size_bytes") else "?"
    first = f"{f['first_run_s'] * 1000:.0f} ms" if f.get("first_run_s") else "failed"
    print(f"one file: {f['path']}, {size}, needs glibc >= {f.get('glibc') or '?'}, first run (unpack) {first}\n")

    def cell(entry: dict) -> str:
        if entry.get("error"):
            return "error"
        return f"{entry['median_s'] * 1000:.1f}" if entry.get("median_s") else "-"

    header = (f"{'operation':<34} {'frozen':>8} {'installed':>10} {'podman':>8} "
              f"{'frozen/installed':>17} {'frozen/podman':>14}")
    print(header)
    print("-" * len(header))
    for op, entry in data["results"].items():
        cells = [cell(entry[t]) if t in entry else "-" for t in TOOLS]
        r1, r2 = entry["ratio_frozen_installed"], entry["ratio_frozen_podman"]
        print(f"{LABELS[op]:<34} {cells[0]:>8} {cells[1]:>10} {cells[2]:>8} "
              f"{(f'{r1:.2f}' if r1 else '-'):>17} {(f'{r2:.2f}' if r2 else '-'):>14}")
    print("\ntargets: frozen/installed <= 1.20, frozen/podman <= 1.00")


def cleanup(tool: Tool, run_dir: Path, log) -> None:
    try:
        tool.run("system", "reset", "--force")
    except (CommandFailed, subprocess.TimeoutExpired) as exc:
        log(f"{tool.name}: system reset failed: {exc}")
    try:  # the store's namespace holder
        os.kill(int((run_dir / "holder.pid").read_text().split()[0]), signal.SIGKILL)
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(ap, reps=20)
    ap.add_argument("--frozen", default=str(HERE.parent / "dist" / "pinnace"),
                    help="the one-file executable (default: dist/pinnace of this checkout)")
    ap.add_argument("--label", default="", help="a line printed above the table (where the stores are)")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be >= 1")
    if not os.access(args.frozen, os.X_OK):
        ap.error(f"{args.frozen} is not an executable file (build it with packaging/build)")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    image = f"{args.registry}/fixtures/busybox:latest"
    workdir = Path(tempfile.mkdtemp(prefix="pf-", dir=args.workdir))  # short: podman wants runroot < 50 chars
    frozen = frozen_tool(args.frozen, workdir)
    tools = [frozen]
    if args.only != "podman":
        if not shutil.which(args.pinnace):
            ap.error(f"pinnace command not found: {args.pinnace}")
        installed = pinnace_tool(args.pinnace.split(), workdir)
        installed.name = "installed"
        tools.append(installed)
    if args.only != "pinnace":
        if not shutil.which(args.podman):
            ap.error(f"podman not found: {args.podman} (bench/run installs it)")
        tools.append(podman_tool(args.podman.split(), workdir))
    by = {t.name: t for t in tools}
    facts = machine_facts(by.get("podman"), by.get("installed"))
    frozen_facts = {"path": str(Path(args.frozen).resolve()), "size_bytes": os.path.getsize(args.frozen),
                    "glibc": glibc_floor(args.frozen), "first_run_s": first_run(frozen, log)}
    t0 = time.perf_counter()
    try:
        for tool in tools:
            try:
                tool.run("pull", "-q", "--tls-verify=false", image)
            except (CommandFailed, subprocess.TimeoutExpired) as exc:
                tool.errors["pull"] = str(exc)
                log(f"{tool.name}: pull failed: {exc}")
        measure([t for t in tools if "pull" not in t.errors], args.reps, image, log)
        log(f"measured in {time.perf_counter() - t0:.1f} s")
    finally:
        cleanup(frozen, workdir / "frozen-run", log)
        if "installed" in by:
            cleanup(by["installed"], workdir / "pinnace-run", log)
        if "podman" in by:
            try:
                by["podman"].run("system", "reset", "--force")
            except (CommandFailed, subprocess.TimeoutExpired) as exc:
                log(f"podman: system reset failed: {exc}")
        shutil.rmtree(workdir, ignore_errors=True)
        if workdir.exists():
            log(f"could not remove all of {workdir} (files owned by subordinate ids?)")

    data = report(tools, args.reps, facts, args.label)
    data["frozen"] = frozen_facts
    print_table(data)
    return publish(data, args.json, tools)


if __name__ == "__main__":
    sys.exit(main())
