"""Many CLIs at once on one store, and a pull killed halfway: the store stays consistent."""
from __future__ import annotations

import pytest

import os
import signal
import socket
import subprocess
import threading
import time

from testenv import REGISTRY

pytestmark = pytest.mark.anyuser  # rootless as the test user, and again as root

DEBIAN = f"{REGISTRY}/fixtures/debian:latest"


def _wait_all(procs, timeout=600):
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        results.append((p.returncode, out.decode(), err.decode()))
    return results


def test_parallel_pulls_same_and_different(pinnace, fixtures_info):
    procs = [pinnace.popen("pull", "-q", DEBIAN, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(8)]
    results = _wait_all(procs)
    assert all(rc == 0 for rc, _, _ in results), results
    assert {out.strip() for _, out, _ in results} == {fixtures_info["debian"]["config"][7:]}
    names = ["busybox", "busybox-layers", "busybox-multi", "debian"]
    procs = [pinnace.popen("pull", "-q", f"{REGISTRY}/fixtures/{n}", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for n in names]
    results = _wait_all(procs)
    assert all(rc == 0 for rc, _, _ in results), results
    check = pinnace("system", "check")
    assert "ok" in check.out and "problem" not in check.out
    ids = set(pinnace("images", "-q").out.split())
    assert ids == {fixtures_info[n]["config"][7:19] for n in ("busybox", "busybox-layers", "debian")}
    # every layer exactly once: busybox base (shared by 3 images) + 2 of busybox-layers + debian
    assert len(os.listdir(pinnace.root / "layers")) == 4
    mnt = pinnace("image", "mount", DEBIAN).out.strip()
    assert "bookworm" in pinnace("unshare", "cat", f"{mnt}/etc/os-release").out


class SlowProxy:
    """A TCP proxy to the registry that passes at most `rate` bytes/s, so a pull can be killed mid-download."""

    def __init__(self, upstream: str, rate: int):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.rate = rate
        self.sent = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, up, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, True), daemon=True).start()

    def _pump(self, src, dst, throttle):
        try:
            while data := src.recv(16384):
                dst.sendall(data)
                if throttle:
                    self.sent += len(data)
                    if self.rate:
                        time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.stopped = True
        self.sock.close()


def test_pull_killed_mid_download_is_repaired_by_next_pull(pinnace, fixtures_info):
    proxy = SlowProxy(REGISTRY, rate=4 << 20)  # 48 MB at 4 MB/s: ~12 s
    try:
        ref = f"{proxy.host}/fixtures/debian:latest"
        proc = pinnace.popen("pull", "-q", ref, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while proxy.sent < (8 << 20) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # half-written objects are there, unpublished
        assert pinnace("images", "-q").out == ""
        leftovers = [p for p in (pinnace.root / "layers").iterdir() if ".partial-" in p.name]
        assert leftovers, "expected an interrupted partial layer"
        check = pinnace("system", "check", check=False)
        assert check.rc == 125 and "incomplete" in check.out
        proxy.rate = 0  # full speed now
        out = pinnace("pull", "-q", ref).out.strip()
        assert out == fixtures_info["debian"]["config"][7:]
        assert "ok" in pinnace("system", "check").out
        assert not [p for p in (pinnace.root / "layers").iterdir() if ".partial-" in p.name]
        assert not os.listdir(pinnace.root / "tmp")
    finally:
        proxy.close()


def test_rmi_and_prune_racing_pulls_leave_a_consistent_store(pinnace, fixtures_info):
    layers = f"{REGISTRY}/fixtures/busybox-layers:latest"
    busybox = f"{REGISTRY}/fixtures/busybox:latest"
    procs = []
    for round_ in range(4):
        procs += [pinnace.popen("pull", "-q", layers, stdout=subprocess.PIPE, stderr=subprocess.PIPE),
                  pinnace.popen("pull", "-q", busybox, stdout=subprocess.PIPE, stderr=subprocess.PIPE),
                  pinnace.popen("rmi", "-a", "-f", stdout=subprocess.PIPE, stderr=subprocess.PIPE),
                  pinnace.popen("image", "prune", "-a", "-f", stdout=subprocess.PIPE, stderr=subprocess.PIPE)]
    results = _wait_all(procs)
    # a pull may lose its image to a later rmi, but no command may fail or leave the store broken
    bad = [(rc, err) for rc, _, err in results if rc not in (0, 1, 2)]
    assert bad == [], bad
    assert "ok" in pinnace("system", "check").out
    # whatever is listed is whole: every listed image mounts and shows its files
    for iid in pinnace("images", "-q").out.split():
        mnt = pinnace("image", "mount", iid).out.strip()
        assert "busybox" in pinnace("unshare", "ls", f"{mnt}/bin").out
    pinnace("pull", "-q", layers)
    assert "ok" in pinnace("system", "check").out
