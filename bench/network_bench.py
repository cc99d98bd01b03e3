"""Networking of pinnace side by side with Podman on the same machine (medians of N runs).

    python bench/network_bench.py [--reps 5] [--json out.json] [--only pinnace|podman] [--workdir DIR]

Rootless (bench/run sets it up), isolated stores side by side, the busybox fixture, each engine's default network
(pinnace: user-mode; Podman 4.3: slirp4netns + rootlessport); engines interleaved rep by rep. Measured:
  outbound: busybox `wget -O /dev/null` of 1 GiB in a `run --rm` container from a server on the host's 127.0.0.1
    (here: sendfile from /dev/shm), timed by the server from request to the client's close (start-up excluded).
    pinnace: host.containers.internal; Podman: `--network slirp4netns:allow_host_loopback=true` and 10.0.2.2,
    its documented way to the host's loopback (its host.containers.internal is the host's eth0 address).
  published: busybox httpd in `run -d --tmpfs /srv -p 127.0.0.1:PORT:80` serving 1 GiB made in the container; a
    client here (recv_into a preallocated buffer), connect to EOF. Both with a `--network host` ceiling.
  connections: 1,000 sequential HTTP requests of an empty file through the published port (httpd forks each).
  run --rm busybox true, default network and --network none.
  memory (RSS, PSS from smaps_rollup) after the published-port runs: pinnace's supervisor of the -p container +
    its `pinnace-netns` child - the supervisor of a --network none container; Podman's slirp4netns +
    rootlessport + rootlessport-child of the -p container.
Nothing is asserted. Rates: median (best), pinnace/podman > 1 means pinnace is faster; times: < 1 does.
"""
from __future__ import annotations

import argparse
import functools
import os
import queue
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from containers_bench import (Bench, Log, _read, _stat, clean_up, summary,  # noqa: E402
                              supervisor_memory, timed)
from images_bench import (CommandFailed, Tool, common_arguments, machine_facts, pinnace_tool,  # noqa: E402
                          podman_tool, publish)

SIZE = 1 << 30
CONNECTIONS = 1000
GBIT = SIZE * 8 / 1e9
# op: (label, quantity per sample: Gbit or connections; None for plain times)
OPS = {
    "outbound": ("outbound 1 GiB, Gbit/s", GBIT),
    "outbound_host": ("  same, --network host (ceiling)", GBIT),
    "published": ("published port 1 GiB, Gbit/s", GBIT),
    "published_host": ("  same, --network host (ceiling)", GBIT),
    "connect": ("published port, connections/s", CONNECTIONS),
    "run_default": ("run --rm true, default network, s", None),
    "run_none": ("run --rm true, --network none, s", None),
}
HTTPD = "dd if=/dev/zero of=/srv/f bs=1M count=1024 2>/dev/null && touch /srv/ready && exec httpd -f -h /srv -p {addr}"
RCVTIMEO = struct.pack("ll", 60, 0)  # a stalled transfer fails after 60 s instead of hanging the bench


class FileServer:
    """HTTP/1.0 on the host's 127.0.0.1, one connection at a time: every request gets the whole file by
    sendfile, timed from the end of the request to the client's close (the client has read everything)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.done: queue.Queue[tuple[float, int]] = queue.Queue()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                with self.sock.accept()[0] as conn:
                    self.done.put(self._answer(conn))
            except OSError:
                if self.sock.fileno() < 0:  # close()d (its shutdown woke the accept)
                    return
                self.done.put((0.0, 0))

    def _answer(self, conn: socket.socket) -> tuple[float, int]:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, RCVTIMEO)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return 0.0, 0
            head += chunk
        t0 = time.perf_counter()
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % SIZE)
        with open(self.path, "rb") as f:
            sent = conn.sendfile(f)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass
        return time.perf_counter() - t0, sent

    def take(self) -> tuple[float, int]:
        """(seconds, bytes sent) of the next request; (0, 0) if none comes in 10 s."""
        try:
            return self.done.get(timeout=10)
        except queue.Empty:
            return 0.0, 0

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


def http_get(port: int, path: str, buf: memoryview) -> tuple[bytes, int]:
    """The status line and the bytes received (headers included) for GET /path on 127.0.0.1:port."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.settimeout(None)  # blocking reads, no poll before each: SO_RCVTIMEO bounds a stall
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, RCVTIMEO)
        c.sendall(f"GET /{path} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
        got = n = c.recv_into(buf)
        status = bytes(buf[:min(n, 64)]).split(b"\r\n", 1)[0]
        while n := c.recv_into(buf):
            got += n
        return status, got


def wait_ready(port: int, buf: memoryview, seconds: float = 60) -> bool:
    """True once the httpd behind port answers GET /ready (the 1 GiB file is then complete)."""
    for _ in range(int(seconds / 0.2)):
        try:
            if b" 200 " in http_get(port, "ready", buf)[0]:
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def netns(pid: int | str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:  # gone, or another user's
        return f"unknown {pid}"


def rollup(pid: int | None, sign: int = 1) -> dict | None:
    fields = (x.partition(":") for x in ((_read(f"/proc/{pid}/smaps_rollup") or "") if pid else "").splitlines())
    kib = {f"{k.lower()}_kib": int(v.split()[0]) for k, _, v in fields if k in ("Rss", "Pss")}
    return {"pid": pid, **kib, "sign": sign} if len(kib) == 2 else None


def processes() -> list[tuple[int, list[str]]]:
    return [(int(n), cmd.rstrip("\0").split("\0")) for n in os.listdir("/proc")
            if n.isdigit() and (cmd := _read(f"/proc/{n}/cmdline"))]


class NetBench(Bench):
    def __init__(self, tools: list[Tool], image: str, reps: int, log: Log) -> None:
        super().__init__(tools, Tool("host", [], dict(os.environ)), image, reps, log)
        self.server: FileServer | None = None  # the host's file server, for the outbound runs
        self.published: dict[str, tuple[str, int]] = {}  # engine: (container id, host port)
        self.buf = memoryview(bytearray(1 << 20))

    def rounds(self, op: str, measure, tools: list[Tool] | None = None) -> None:
        """`measure(tool)` → seconds or None, reps times per tool, alternating which tool goes first."""
        tools, (label, quantity) = [t for t in (tools or self.tools) if op not in t.errors], OPS[op]
        self.log(f"{label.strip()} ×{self.reps}")
        for i in range(self.reps):
            shown = []
            for tool in tools if i % 2 == 0 else tools[::-1]:
                secs = measure(tool) if op not in tool.errors else None
                if secs is not None:
                    tool.samples.setdefault(op, []).append(secs)
                shown.append(f"{tool.name} " + ("failed" if secs is None else f"{quantity / secs:.2f}" if quantity
                                                else f"{secs:.3f} s"))
            self.log(f"  run {i + 1}: " + ", ".join(shown))

    def fail(self, tool: Tool, op: str, msg: str) -> None:  # None: what a failed measurement returns
        tool.errors[op] = msg
        self.log(f"  {tool.name}: {op} failed: {msg}")

    def elapsed(self, tool: Tool, op: str, *args: str) -> float | None:
        try:
            return timed(tool, *args)[0]
        except (CommandFailed, subprocess.TimeoutExpired) as exc:
            return self.fail(tool, op, str(exc))

    def started(self, tool: Tool, op: str, *args: str) -> str | None:
        out = self.sample(tool, op, "run", "-d", *args, record=False)
        return out.splitlines()[-1].strip() if out else None

    def run_rm(self) -> None:
        none = ["--network", "none"]
        for tool in self.tools:  # first start: namespace holder / pause process, caches
            for net in ([], none):
                self.sample(tool, "run_warmup", "run", "--rm", *net, self.image, "true", record=False)
        for op, net in (("run_default", []), ("run_none", none)):
            self.rounds(op, lambda t: self.elapsed(t, op, "run", "--rm", *net, self.image, "true"))

    def outbound(self, op: str, host_net: bool) -> None:
        port = self.server.port

        def measure(tool: Tool) -> float | None:
            net, host = (["--network", "host"], "127.0.0.1") if host_net else \
                (["--network", "slirp4netns:allow_host_loopback=true"], "10.0.2.2") if tool.name == "podman" else \
                ([], "host.containers.internal")
            while not self.server.done.empty():  # stale: from a run that failed after connecting
                self.server.done.get_nowait()
            if self.sample(tool, op, "run", "--rm", *net, self.image, "wget", "-q", "-O", "/dev/null",
                           f"http://{host}:{port}/", record=False) is None:
                return None
            secs, sent = self.server.take()
            return secs if sent == SIZE else self.fail(tool, op, f"the server sent {sent} of {SIZE} bytes")
        self.rounds(op, measure)

    def start_httpd(self, op: str, host_net: bool) -> dict[str, int]:
        """One busybox httpd container per engine, serving /srv/f (1 GiB) on a host port; engine → port."""
        ports = {}
        for tool in self.tools:
            with socket.create_server(("127.0.0.1", 0)) as s:  # a free port (for a moment)
                port = s.getsockname()[1]
            net, addr = (["--network", "host"], f"127.0.0.1:{port}") if host_net else \
                (["-p", f"127.0.0.1:{port}:80"], "80")
            cid = self.started(tool, op, "--tmpfs", "/srv:size=1100m", *net, self.image, "sh", "-c",
                               HTTPD.format(addr=addr))
            if cid and not wait_ready(port, self.buf):
                self.fail(tool, op, f"httpd in {cid[:12]} never answered on 127.0.0.1:{port}")
            elif cid:
                ports[tool.name] = port
                if not host_net:
                    self.published[tool.name] = (cid, port)
        return ports

    def fetch(self, op: str, ports: dict[str, int], path: str = "f", count: int = 1) -> None:
        """Time `count` GETs of /path, a new connection each, from 127.0.0.1:ports[engine] (/f: 1 GiB)."""
        def measure(tool: Tool) -> float | None:
            port, t0 = ports[tool.name], time.perf_counter()
            try:
                got = [http_get(port, path, self.buf) for _ in range(count)]
            except OSError as exc:
                return self.fail(tool, op, f"GET /{path} on 127.0.0.1:{port}: {exc}")
            secs = time.perf_counter() - t0
            bad = next((g for g in got if b" 200 " not in g[0] or (path == "f" and g[1] < SIZE)), None)
            return self.fail(tool, op, f"GET /{path} on 127.0.0.1:{port}: {bad}") if bad else secs
        self.rounds(op, measure, [t for t in self.tools if t.name in ports])

    def net_memory(self, pinnace_root: str) -> None:
        """Memory of each engine's networking processes for the -p container (see the module docstring)."""
        nones = {t.name: self.started(t, "memory", "--network", "none", self.image, "sleep", "1000")
                 for t in self.tools}
        time.sleep(2.0)  # let the new supervisors finish starting up
        for tool in (t for t in self.tools if t.name in self.published and nones[t.name]):
            cid = self.published[tool.name][0]
            try:
                parts = pinnace_parts(pinnace_root, cid, nones["pinnace"]) if tool.name == "pinnace" \
                    else podman_parts(tool, cid)
            except (CommandFailed, subprocess.TimeoutExpired) as exc:
                parts = {str(exc): None}
            if None in parts.values():
                self.fail(tool, "memory", f"not found for {cid[:12]}: {[k for k, v in parts.items() if not v]}")
                continue
            added = {k: sum(p["sign"] * p[k] for p in parts.values()) for k in ("rss_kib", "pss_kib")}
            self.memory[tool.name] = {"processes": parts, "added": added}


def pinnace_parts(store_root: str, cid: str, none_cid: str) -> dict[str, dict | None]:
    """The -p container's supervisor and its pinnace-netns child, minus a --network none supervisor."""
    sups = supervisor_memory("pinnace", store_root)["processes"]

    def of(c: str, sign: int) -> dict | None:
        return next(({**p, "sign": sign} for p in sups if c in (_read(f"/proc/{p['pid']}/cmdline") or "")), None)
    sup = of(cid, 1)
    child = next((pid for pid, _ in processes() if sup and (_stat(pid) or ("", 0))[1] == sup["pid"]
                  and (_read(f"/proc/{pid}/comm") or "").strip() == "pinnace-netns"), None)
    return {"supervisor (-p)": sup, "pinnace-netns child": rollup(child),
            "minus supervisor (--network none)": of(none_cid, -1)}


def podman_parts(tool: Tool, cid: str) -> dict[str, dict | None]:
    """slirp4netns (by the netns path in its argv), rootlessport-child (in the container's netns), its parent."""
    _, out = timed(tool, "inspect", "--format", "{{.NetworkSettings.SandboxKey}} {{.State.Pid}}", cid)
    key, pid = out.split()
    parts: dict[str, dict | None] = {"slirp4netns": None, "rootlessport": None, "rootlessport-child": None}
    for p, argv in processes():
        if os.path.basename(argv[0]) == "slirp4netns" and key in argv:
            parts["slirp4netns"] = rollup(p)
        elif argv[0] == "rootlessport-child" and netns(p) == netns(pid):
            parts["rootlessport-child"] = rollup(p)
            parts["rootlessport"] = rollup((_stat(p) or ("", None))[1])
    return parts


def report(bench: NetBench, facts: dict, label: str) -> dict:
    results = {}
    for op, (_, quantity) in OPS.items():
        entry: dict = {}
        for t in bench.tools:
            entry[t.name] = e = summary(t, op)
            if quantity and e["median_s"]:
                e["median_rate"], e["best_rate"] = quantity / e["median_s"], quantity / e["min_s"]
        key = "median_rate" if quantity else "median_s"
        a, b = entry.get("pinnace", {}).get(key), entry.get("podman", {}).get(key)
        entry["ratio_pinnace_podman"] = round(a / b, 3) if a and b else None
        results[op] = entry
    return {"benchmark": "network", "label": label, "reps": bench.reps, "image": bench.image, "size": SIZE,
            "connections": CONNECTIONS, "machine": facts, "results": results, "network_memory": bench.memory,
            "setup_errors": {t.name: {k: v for k, v in t.errors.items() if k not in OPS} for t in bench.tools}}


def print_table(data: dict) -> None:
    m = data["machine"]
    if data.get("label"):
        print(f"\n== {data['label']}")
    print(f"\nmachine: {m['nproc']} cpus ({m['cpu']}), {m['mem_gib']} GiB, kernel {m['kernel']}, {m['os']}")
    print(f"podman: {m['podman']}   pinnace: {m['pinnace']}   reps: {data['reps']} "
          "(median (best); pinnace/podman > 1 is faster for rates, < 1 for times)\n")

    def cell(e: dict | None) -> str:
        if not e or e["error"] or e["median_s"] is None:
            return "error" if e and e["error"] else "-"
        a, b, fmt = (e["median_rate"], e["best_rate"], ".0f" if e["median_rate"] > 100 else ".2f") \
            if "median_rate" in e else (e["median_s"], e["min_s"], ".3f")
        return f"{a:{fmt}} ({b:{fmt}})"

    print(header := f"{'operation':<36} {'pinnace':>15} {'podman':>15} {'pinnace/podman':>15}")
    print("-" * len(header))
    for op, e in data["results"].items():
        r = f"{e['ratio_pinnace_podman']:.2f}" if e["ratio_pinnace_podman"] else "-"
        print(f"{OPS[op][0]:<36} {cell(e.get('pinnace')):>15} {cell(e.get('podman')):>15} {r:>15}")

    mem = data["network_memory"]
    print("\nnetworking memory of one -d -p container, after the published-port runs (MiB, RSS / PSS)")
    for eng in (e for e in ("pinnace", "podman") if e in mem):
        for name, p in [*mem[eng]["processes"].items(), ("added by networking", mem[eng]["added"])]:
            print(f"  {eng + ' ' + name:<44} {p['rss_kib'] / 1024:>7.2f} / {p['pss_kib'] / 1024:.2f}")
    if "pinnace" in mem and "podman" in mem:
        a, b = mem["pinnace"]["added"], mem["podman"]["added"]
        print(f"  {'pinnace/podman':<44} {a['rss_kib'] / b['rss_kib']:>7.2f} / {a['pss_kib'] / b['pss_kib']:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(ap, reps=5)
    ap.add_argument("--label", default="", help="a line printed above the table (where the stores are)")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be >= 1")

    log: Log = functools.partial(print, file=sys.stderr, flush=True)
    image = f"{args.registry}/fixtures/busybox:latest"
    engines = [e for e in (("pinnace", args.pinnace, pinnace_tool), ("podman", args.podman, podman_tool))
               if args.only in (None, e[0])]
    for name, cmd, _ in engines:
        if not shutil.which(cmd.split()[0]):
            ap.error(f"{name} command not found: {cmd}")
    workdir = Path(tempfile.mkdtemp(prefix="pn-", dir=args.workdir))  # short: podman wants runroot < 50 chars
    tools = [make(cmd.split(), workdir) for _, cmd, make in engines]
    by = {t.name: t for t in tools}
    facts = machine_facts(by.get("podman"), by.get("pinnace"))
    blob = Path(f"/dev/shm/pinnace-netbench-{os.getpid()}")
    bench = NetBench(tools, image, args.reps, log)
    t0 = time.perf_counter()
    try:
        with open(blob, "wb") as f:  # real pages, not a hole: the server reads what a file server would
            for _ in range(SIZE >> 20):
                f.write(bytes(1 << 20))
        bench.server = FileServer(blob)
        for t in tools:  # same flag for both engines: the fixture registry is plain HTTP
            bench.sample(t, "pull", "pull", "-q", "--tls-verify=false", image, record=False)
        bench.run_rm()
        bench.outbound("outbound", host_net=False)
        bench.outbound("outbound_host", host_net=True)
        bench.fetch("published", bench.start_httpd("published", host_net=False))
        bench.fetch("connect", {k: v[1] for k, v in bench.published.items()}, "ready", CONNECTIONS)
        bench.net_memory(str(workdir / "pinnace-root"))
        for t in tools:
            bench.remove_all(t)
        bench.fetch("published_host", bench.start_httpd("published_host", host_net=True))
        log(f"measured in {time.perf_counter() - t0:.1f} s")
    finally:
        if bench.server:
            bench.server.close()
        blob.unlink(missing_ok=True)
        clean_up(bench, by, workdir, log)

    data = report(bench, facts, args.label)
    print_table(data)
    return publish(data, args.json, tools)


if __name__ == "__main__":
    sys.exit(main())
