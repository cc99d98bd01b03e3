"""Build and push of pinnace side by side with Podman (buildah inside) on the same machine (medians of N runs).

    python bench/build_bench.py [--reps 5] [--json out.json] [--only pinnace|podman] [--workdir DIR] [--settle S]

Rootless (bench/run sets it up), isolated stores side by side (as in images_bench.py), engines interleaved rep
by rep (alternating which goes first). Measured:
  build of the reference Dockerfile (DOCKERFILE below; the context holds a 20 MiB file of random bytes made
    once), each engine's default network for RUN; pinnace `build`, Podman `build --layers --pull=never`, both
    `-t localhost/bench-build:latest`, the base pulled beforehand:
    cold: `--no-cache`, the previous image removed (rmi, image prune) before each rep, after one untimed
      warm-up build; no step may report `Using cache`. Then at once a fully cached rebuild (same context,
      cache on), which must report every step cached and give the cold build's image ID (else: failed).
    cold in a fresh store, once per engine at the end (system reset, pull the base, build with the cache on),
      to check that `--no-cache` measures a cold build.
    The built image is then checked with `run --rm` (/big's checksum, 1,000 files in /many).
  push of the fixture debian image (pulled first), `push -q --tls-verify=false --digestfile`:
    to the fixture registry under a fresh repository each rep (its blobs can be mounted from fixtures/debian);
    to a fresh registry (Debian's docker-registry on 127.0.0.1:5010, empty, started before and stopped after
    each push, untimed): every blob is uploaded. Pushed manifests are fetched back and checked, then deleted.
Before each timed cold build (and fresh-store build) the bench waits --settle seconds (default 31, 0 when the
stores are on tmpfs): see images_bench.Tool.reset_and_settle for ext4's delay on reusing freed inodes.
Nothing is asserted: medians, minimums, pinnace/podman (< 1: pinnace is faster) and the issue's targets.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from containers_bench import Bench, Log, clean_up, summary, timed  # noqa: E402
from images_bench import (SETTLE_SECONDS, CommandFailed, Tool, common_arguments, machine_facts,  # noqa: E402
                          pinnace_tool, podman_tool, publish)

TAG = "localhost/bench-build:latest"
BIG = 20 << 20
FILES = 1000
DOCKERFILE = """\
FROM {registry}/fixtures/busybox
RUN echo hello
COPY big /big
RUN mkdir /many && cd /many && i=0; while [ $i -lt 1000 ]; do echo $i > f$i; i=$((i+1)); done
"""
CACHED_STEPS = 3  # every step after FROM
FRESH_PORT = 5010
# op: (label, the target for pinnace/podman or None)
OPS = {
    "build_cold": ("build, cold (--no-cache)", 0.8),
    "build_cached": ("build, fully cached rebuild", 0.5),
    "build_fresh": ("build, cold in a fresh store (1 run)", None),
    "push": ("push debian, fixture registry", 1.0),
    "push_fresh": ("push debian, fresh registry", None),
}
ACCEPT = ", ".join(f"application/vnd.{t}" for t in (
    "oci.image.manifest.v1+json", "oci.image.index.v1+json", "docker.distribution.manifest.v2+json",
    "docker.distribution.manifest.list.v2+json"))
CHECK = f"wc -c < /big; sha256sum /big; ls /many | wc -l; cat /many/f{FILES - 1}"


def fs_type(path: Path) -> str:
    """The filesystem type of the mount holding path (the longest mount point that prefixes it)."""
    best, kind, p = "", "?", str(path.resolve())
    with open("/proc/self/mounts") as f:
        for line in f:
            _, mnt, typ = line.split()[:3]
            mnt = mnt.replace("\\040", " ")
            if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, kind = mnt, typ
    return kind


def http(method: str, url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
    except OSError as exc:
        return 0, {}, str(exc).encode()


class Registry:
    """A throwaway docker-registry (CNCF Distribution, as ../shared/fixtures/registry runs it, no auth) on
    127.0.0.1:PORT with its data under `home`; started empty, stopped by pid (ours only)."""

    def __init__(self, binary: str, port: int, home: Path) -> None:
        self.binary, self.port, self.home, self.proc = binary, port, home, None

    def start(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)
        (self.home / "data").mkdir(parents=True)
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", self.port)) == 0:
                raise CommandFailed(f"127.0.0.1:{self.port} is in use by another process")
        (self.home / "config.yml").write_text(
            f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {self.home}/data\n"
            "  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: pinnace-bench-{self.port}\n")
        with open(self.home / "log", "wb") as log:
            self.proc = subprocess.Popen([self.binary, "serve", str(self.home / "config.yml")], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        for _ in range(150):
            if http("GET", f"http://127.0.0.1:{self.port}/v2/")[0] == 200:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        tail = (self.home / "log").read_text(errors="replace")[-300:]
        self.stop()
        raise CommandFailed(f"registry on 127.0.0.1:{self.port} did not come up: {tail}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


class BuildBench(Bench):
    def __init__(self, tools: list[Tool], base: str, reps: int, log: Log, ctx: Path, settle: float) -> None:
        super().__init__(tools, Tool("host", [], dict(os.environ)), base, reps, log)
        self.ctx, self.settle = ctx, settle
        self.image_ids: dict[str, str] = {}           # engine: ID of its last cold build
        self.checks: dict[str, dict] = {}             # engine: what was checked → result
        self.pushed: list[tuple[str, str, str]] = []  # (registry, repository, digest) to delete afterwards

    def rounds(self, op: str, measure) -> None:
        """`measure(tool, rep)` → seconds or None, reps times per tool, alternating which tool goes first."""
        self.log(f"{OPS[op][0]} ×{self.reps}")
        for i in range(self.reps):
            shown = []
            for tool in self.tools if i % 2 == 0 else self.tools[::-1]:
                secs = measure(tool, i) if op not in tool.errors else None
                if secs is not None:
                    tool.samples.setdefault(op, []).append(secs)
                shown.append(f"{tool.name} " + ("failed" if secs is None else f"{secs:.3f} s"))
            self.log(f"  run {i + 1}: " + ", ".join(shown))

    def fail(self, tool: Tool, op: str, msg: str) -> None:  # None: what a failed measurement returns
        tool.errors[op] = msg
        self.log(f"  {tool.name}: {op} failed: {msg}")

    def run(self, tool: Tool, op: str, *args: str) -> tuple[float, str] | None:
        try:
            return timed(tool, *args)
        except (CommandFailed, subprocess.TimeoutExpired) as exc:
            return self.fail(tool, op, str(exc))

    # ---- build

    def build_args(self, tool: Tool, no_cache: bool) -> list[str]:
        podman = ["--layers", "--pull=never"] if tool.name == "podman" else []
        return ["build", *podman, *(["--no-cache"] if no_cache else []), "-t", TAG, str(self.ctx)]

    def remove_build(self, tool: Tool, settle: bool = True) -> None:
        """No previous image, no build cache: the tag goes, then every dangling image (Podman's intermediate
        images; pinnace's cache entries die with the layers they name)."""
        try:
            timed(tool, "rmi", "-f", TAG)
        except (CommandFailed, subprocess.TimeoutExpired):
            pass  # not there
        try:
            timed(tool, "image", "prune", "-f")
        except (CommandFailed, subprocess.TimeoutExpired) as exc:
            self.log(f"  {tool.name}: image prune failed: {exc}")
        if settle and self.settle:
            os.sync()
            time.sleep(self.settle)

    def cold(self, tool: Tool, op: str = "build_cold", no_cache: bool = True) -> float | None:
        if op == "build_cold":
            self.remove_build(tool)
        got = self.run(tool, op, *self.build_args(tool, no_cache))
        if got is None:
            return None
        if "Using cache" in got[1]:  # --no-cache, or a new store: nothing may come from a cache
            return self.fail(tool, op, f"a cold build used the cache; output:\n{got[1]}")
        self.image_ids[tool.name] = got[1].splitlines()[-1].strip()
        return got[0]

    def cached(self, tool: Tool) -> float | None:
        """The rebuild right after a cold build: timed, then checked to be wholly cached."""
        got = self.run(tool, "build_cached", *self.build_args(tool, no_cache=False)) \
            if "build_cached" not in tool.errors else None
        if got is None:
            return None
        hits = got[1].count("Using cache")
        image_id = got[1].splitlines()[-1].strip()
        if hits != CACHED_STEPS or image_id != self.image_ids.get(tool.name):
            return self.fail(tool, "build_cached", f"not a fully cached rebuild: {hits} of {CACHED_STEPS} steps "
                             f"cached, image {image_id[:12]} after {self.image_ids.get(tool.name, '?')[:12]}; "
                             f"output:\n{got[1]}")
        return got[0]

    def builds(self) -> None:
        for tool in self.tools:  # first build: pause process / namespace holder, runtime, page cache
            self.remove_build(tool, settle=False)
            self.run(tool, "build_warmup", *self.build_args(tool, no_cache=True))
        self.log(f"{OPS['build_cold'][0]}, then {OPS['build_cached'][0]} ×{self.reps}")
        for i in range(self.reps):
            shown = []
            for tool in self.tools if i % 2 == 0 else self.tools[::-1]:
                cold = self.cold(tool) if "build_cold" not in tool.errors else None
                cached = self.cached(tool) if cold is not None else None
                for op, secs in (("build_cold", cold), ("build_cached", cached)):
                    if secs is not None:
                        tool.samples.setdefault(op, []).append(secs)
                shown.append(f"{tool.name} " + " + ".join("failed" if s is None else f"{s:.3f} s"
                                                          for s in (cold, cached)))
            self.log(f"  run {i + 1}: " + ", ".join(shown))
        for tool in self.tools:
            self.check_image(tool)

    def check_image(self, tool: Tool) -> None:
        """Does the built image hold what the Dockerfile says? (/big as in the context, 1,000 files.)"""
        want = [str(BIG), f"{hashlib.sha256((self.ctx / 'big').read_bytes()).hexdigest()}  /big", str(FILES),
                str(FILES - 1)]
        got = self.run(tool, "image_check", "run", "--rm", "--network", "none", TAG, "sh", "-c", CHECK)
        lines = [ln.strip() for ln in got[1].splitlines()] if got else None
        self.checks.setdefault(tool.name, {})["image_content"] = "ok" if lines == want else \
            f"expected {want}, got {lines if got else tool.errors.get('image_check')}"
        if lines is not None and lines != want:
            self.fail(tool, "image_check", self.checks[tool.name]["image_content"])

    def fresh_store(self) -> None:
        self.log(f"{OPS['build_fresh'][0]}")
        for tool in self.tools:
            try:
                tool.reset()
                timed(tool, "pull", "-q", "--tls-verify=false", self.image)
            except (CommandFailed, subprocess.TimeoutExpired) as exc:
                self.fail(tool, "build_fresh", f"resetting the store: {exc}")
                continue
            if self.settle:
                time.sleep(self.settle)
            secs = self.cold(tool, "build_fresh", no_cache=False)
            if secs is not None:
                tool.samples.setdefault("build_fresh", []).append(secs)
                self.log(f"  {tool.name} {secs:.3f} s")

    # ---- push

    def push(self, op: str, source: str, registry: str, repo: str, tool: Tool) -> float | None:
        digestfile = Path(self.ctx.parent / f"digest-{tool.name}")
        digestfile.unlink(missing_ok=True)
        got = self.run(tool, op, "push", "-q", "--tls-verify=false", "--digestfile", str(digestfile), source,
                       f"{registry}/{repo}:latest")
        if got is None:
            return None
        try:
            digest = digestfile.read_text().strip()
        except OSError:
            return self.fail(tool, op, f"no digest in --digestfile {digestfile}")
        status, headers, _ = http("GET", f"http://{registry}/v2/{repo}/manifests/latest", {"Accept": ACCEPT})
        served = {k.lower(): v for k, v in headers.items()}.get("docker-content-digest")
        if status != 200 or served != digest:
            return self.fail(tool, op, f"{registry}/{repo}:latest: HTTP {status}, digest {served}, push said {digest}")
        self.checks.setdefault(tool.name, {})[f"{op}_digest"] = digest
        return got[0]

    def pushes(self, source: str, registry: str, fresh: Registry | None, token: str) -> None:
        def to_fixture(tool: Tool, rep: int) -> float | None:
            repo = f"bench/debian-{tool.name}-{token}-{rep}"
            secs = self.push("push", source, registry, repo, tool)
            if secs is not None:
                self.pushed.append((registry, repo, self.checks[tool.name]["push_digest"]))
            return secs

        def to_fresh(tool: Tool, rep: int) -> float | None:
            try:
                fresh.start()
            except (CommandFailed, OSError) as exc:
                return self.fail(tool, "push_fresh", str(exc))
            try:
                return self.push("push_fresh", source, f"127.0.0.1:{fresh.port}", f"bench/debian-{tool.name}-{rep}",
                                 tool)
            finally:
                fresh.stop()

        self.rounds("push", to_fixture)
        if fresh is None:
            for tool in self.tools:
                self.fail(tool, "push_fresh", "no docker-registry binary (Debian's docker-registry package)")
        else:
            self.rounds("push_fresh", to_fresh)

    def delete_pushed(self) -> None:
        """Delete what the bench pushed to the fixture registry: each repository's manifest and its links to
        blobs (Distribution unlinks a blob from that repository only; fixtures/debian keeps its own)."""
        for registry, repo, digest in self.pushed:
            base = f"http://{registry}/v2/{repo}"
            status, _, body = http("GET", f"{base}/manifests/{digest}", {"Accept": ACCEPT})
            try:
                manifest = json.loads(body) if status == 200 else {}
            except ValueError:
                manifest = {}
            blobs = [d["digest"] for d in [manifest.get("config", {}), *manifest.get("layers", [])] if "digest" in d]
            codes = [http("DELETE", f"{base}/blobs/{b}")[0] for b in blobs]
            codes.append(http("DELETE", f"{base}/manifests/{digest}")[0])
            if any(c != 202 for c in codes):
                self.log(f"  deleting {registry}/{repo}: HTTP {codes}")


def report(bench: BuildBench, facts: dict, label: str, settle: float, fs: str) -> dict:
    results = {}
    for op, (_, target) in OPS.items():
        entry: dict = {t.name: summary(t, op) for t in bench.tools}
        a, b = entry.get("pinnace", {}).get("median_s"), entry.get("podman", {}).get("median_s")
        entry["ratio_pinnace_podman"] = round(a / b, 3) if a and b else None
        entry["target_ratio"] = target
        results[op] = entry
    return {"benchmark": "build", "label": label, "reps": bench.reps, "base": bench.image, "tag": TAG,
            "dockerfile": DOCKERFILE.format(registry=bench.image.split("/")[0]), "big_bytes": BIG,
            "cold_method": "--no-cache after rmi + image prune of the previous build (build_fresh: a new store)",
            "stores_fs": fs, "settle_s": settle, "machine": facts, "results": results, "checks": bench.checks,
            "setup_errors": {t.name: {k: v for k, v in t.errors.items() if k not in OPS} for t in bench.tools}}


def print_table(data: dict) -> None:
    m = data["machine"]
    if data.get("label"):
        print(f"\n== {data['label']}")
    print(f"\nmachine: {m['nproc']} cpus ({m['cpu']}), {m['mem_gib']} GiB, kernel {m['kernel']}, {m['os']}")
    print(f"podman: {m['podman']}   pinnace: {m['pinnace']}   reps: {data['reps']} (median (min), seconds; "
          f"cold = {data['cold_method']})\n")

    def cell(e: dict | None) -> str:
        if not e:
            return "-"
        if e["error"]:
            return "error"
        return f"{e['median_s']:.3f} ({e['min_s']:.3f})" if e["median_s"] is not None else "-"

    print(header := f"{'operation':<38} {'pinnace':>15} {'podman':>15} {'pinnace/podman':>15} {'target':>7}")
    print("-" * len(header))
    for op, e in data["results"].items():
        r = f"{e['ratio_pinnace_podman']:.2f}" if e["ratio_pinnace_podman"] else "-"
        t = f"≤ {e['target_ratio']:.1f}" if e["target_ratio"] else ""
        print(f"{OPS[op][0]:<38} {cell(e.get('pinnace')):>15} {cell(e.get('podman')):>15} {r:>15} {t:>7}")
    for eng, checks in data["checks"].items():
        print(f"  {eng}: " + ", ".join(f"{k} {v if k == 'image_content' else v[:19]}" for k, v in checks.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(ap, reps=5)
    ap.add_argument("--label", default="", help="a line printed above the table (where the stores are)")
    ap.add_argument("--settle", type=float, help=f"seconds to wait before each cold build (default "
                    f"{SETTLE_SECONDS}, 0 on tmpfs)")
    ap.add_argument("--registry-binary", default="/usr/bin/docker-registry",
                    help=f"Distribution, for the fresh registry on 127.0.0.1:{FRESH_PORT}")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be >= 1")

    log: Log = functools.partial(print, file=sys.stderr, flush=True)
    base = f"{args.registry}/fixtures/busybox:latest"
    debian = f"{args.registry}/fixtures/debian:latest"
    engines = [e for e in (("pinnace", args.pinnace, pinnace_tool), ("podman", args.podman, podman_tool))
               if args.only in (None, e[0])]
    for name, cmd, _ in engines:
        if not shutil.which(cmd.split()[0]):
            ap.error(f"{name} command not found: {cmd}")
    workdir = Path(tempfile.mkdtemp(prefix="pk-", dir=args.workdir))  # short: podman wants runroot < 50 chars
    fs = fs_type(workdir)
    settle = args.settle if args.settle is not None else 0.0 if fs == "tmpfs" else SETTLE_SECONDS
    tools = [make(cmd.split(), workdir) for _, cmd, make in engines]
    by = {t.name: t for t in tools}
    facts = machine_facts(by.get("podman"), by.get("pinnace"))
    ctx = workdir / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(registry=args.registry))
    with open(ctx / "big", "wb") as f:
        f.write(os.urandom(BIG))
    fresh = Registry(args.registry_binary, FRESH_PORT, workdir / "registry") \
        if os.access(args.registry_binary, os.X_OK) else None
    bench = BuildBench(tools, base, args.reps, log, ctx, settle)
    log(f"stores on {fs} in {workdir}; settle {settle:g} s before each cold build")
    t0 = time.perf_counter()
    try:
        for t in tools:  # same flag for both engines: the fixture registry is plain HTTP
            bench.sample(t, "pull", "pull", "-q", "--tls-verify=false", base, record=False)
        bench.builds()
        bench.fresh_store()
        for t in tools:
            bench.sample(t, "pull_debian", "pull", "-q", "--tls-verify=false", debian, record=False)
        bench.pushes(debian, args.registry, fresh, f"{os.getpid()}{int(time.time()) % 100000}")
        log(f"measured in {time.perf_counter() - t0:.1f} s")
    finally:
        if fresh:
            fresh.stop()
        bench.delete_pushed()
        clean_up(bench, by, workdir, log)

    data = report(bench, facts, args.label, settle, fs)
    print_table(data)
    return publish(data, args.json, tools)


if __name__ == "__main__":
    sys.exit(main())
