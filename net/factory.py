"""Sockets inside a container's network namespace, on demand, for a supervisor that lives outside it.

A socket belongs for life to the network namespace it was created in, and the supervisor cannot enter the
container's namespace and come back (setns into the host's namespace needs privileges over it that a
rootless user does not have). So the supervisor forks this small child, which enters the container's
namespace once and then makes sockets on request, passing each back over a socketpair (SCM_RIGHTS):

- published ports: a TCP or UDP socket transparently bound to the client's address (IP_TRANSPARENT), so
  the service sees who connected — rootlessport's known weakness;
- UDP replies: a socket transparently bound to the original destination of a container's datagram, so the
  answer comes from the address and port the container sent to.

Every socket is marked LOCAL_MARK (SO_MARK), which the namespace's nf_tables rules use to route the
container's answers back to it. The child is a fork of the supervisor (shared pages: ~0.1 MiB of PSS),
started at the first request; it exits when the supervisor closes its end or dies.
"""
from __future__ import annotations

import _socket
import os
import signal
import sys

IP_TRANSPARENT = 19
SO_MARK = 36
LOCAL_MARK = 0x3
PR_SET_PDEATHSIG = 1
_SCM_RIGHTS = 1
_CLONE_NEWNET = 0x40000000


class SocketFactory:
    """make(kind, bind, connect) -> fd of a non-blocking socket in the namespace behind `netns_fd`."""

    def __init__(self, netns_fd: int) -> None:
        self.netns_fd = netns_fd       # owned: closed by close()
        self.channel = None            # _socket.socket, our end
        self.pid = 0

    def _start(self) -> None:
        import gc
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        gc.freeze()  # the child shares the supervisor's pages: no collection may touch (copy) them
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                gc.disable()
                _serve(theirs, self.netns_fd)
                code = 0
            except BaseException:  # noqa: BLE001 - a forked child never returns into the supervisor
                pass
            finally:
                os._exit(code)
        gc.unfreeze()
        theirs.close()
        self.channel, self.pid = ours, pid

    def make(self, kind: str, bind: tuple[str, int], connect: tuple[str, int] | None = None) -> int:
        """A socket of `kind` ("tcp" | "udp") bound transparently to `bind`, UDP ones connected to `connect`
        when given. OSError when the factory or the kernel refuses."""
        if self.channel is None:
            self._start()
        request = f"{kind} {bind[0]} {bind[1]}" + (f" {connect[0]} {connect[1]}" if connect else "")
        self.channel.send(request.encode())
        data, ancillary, _, _ = self.channel.recvmsg(64, 64)
        for level, mtype, raw in ancillary:
            if level == _socket.SOL_SOCKET and mtype == _SCM_RIGHTS and len(raw) >= 4:
                return int.from_bytes(raw[:4], sys.byteorder)
        if not data:
            self.close_channel()
            raise OSError(0, "the socket factory is gone")
        raise OSError(int(data.split()[0]) if data[:1].isdigit() else 0, data.decode(errors="replace"))

    def close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.pid:
            try:
                os.waitpid(self.pid, 0)   # it exits on EOF at once
            except ChildProcessError:
                pass  # reaped by the supervisor's wait loop
            self.pid = 0

    def close(self) -> None:
        self.close_channel()
        if self.netns_fd >= 0:
            os.close(self.netns_fd)
            self.netns_fd = -1


def _serve(channel, netns_fd: int) -> None:  # noqa: ANN001 - _socket.socket
    from pinnace.runtime import syscalls
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    syscalls.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    keep = sorted({0, 1, 2, channel.fileno(), netns_fd})
    for lo, hi in zip(keep, keep[1:] + [1 << 20]):
        os.closerange(lo + 1, hi)  # the supervisor's sockets and pipes are none of its business
    syscalls.setns(netns_fd, _CLONE_NEWNET)
    os.close(netns_fd)
    try:
        with open("/proc/self/comm", "w") as f:
            f.write("pinnace-netns")
    except OSError:
        pass
    while True:
        request = channel.recv(256)
        if not request:
            return
        try:
            fd = _make(request.decode().split())
        except OSError as exc:
            channel.send(f"{exc.errno or 0} {exc.strerror or exc}".encode())
            continue
        except (ValueError, IndexError):
            channel.send(b"0 bad request")
            continue
        channel.sendmsg([b"k"], [(_socket.SOL_SOCKET, _SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))])
        os.close(fd)


def _make(words: list[str]) -> int:
    kind = words[0]
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM if kind == "tcp" else _socket.SOCK_DGRAM)
    try:
        sock.setsockopt(_socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.setsockopt(_socket.SOL_SOCKET, SO_MARK, LOCAL_MARK)
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        sock.bind((words[1], int(words[2])))
        if len(words) == 5:
            sock.connect((words[3], int(words[4])))
        sock.setblocking(False)
        return sock.detach()
    except BaseException:
        sock.close()
        raise
