"""`exec -t`: the process gets a new pty; this CLI relays it to the user's terminal (raw mode, resize)
until the process exits. No supervisor is involved: an exec session lives as long as its CLI."""
from __future__ import annotations

import os
import select
import signal
import sys


def _copy_size(src: int, dst: int) -> None:
    import fcntl
    import termios
    try:
        size = fcntl.ioctl(src, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(dst, termios.TIOCSWINSZ, size)
    except OSError:
        pass


def run_with_pty(eng, opts) -> int:  # noqa: ANN001 - LocalEngine, ExecOptions
    import termios
    import tty
    master, slave = os.openpty()
    term = 0 if os.isatty(0) else (1 if os.isatty(1) else None)
    if term is not None:
        _copy_size(term, slave)
    sys.stdout.flush()
    pid = eng.container_exec(opts, (slave, slave, slave))
    os.close(slave)
    saved = termios.tcgetattr(0) if opts.stdin and os.isatty(0) else None
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    old_winch = signal.signal(signal.SIGWINCH, lambda *_: None)
    old_chld = signal.signal(signal.SIGCHLD, lambda *_: None)
    try:
        if saved is not None:
            tty.setraw(0, termios.TCSANOW)
        watch = [master, wake_r] + ([0] if opts.stdin else [])
        while True:
            try:
                ready, _, _ = select.select(watch, [], [])
            except InterruptedError:
                continue
            if wake_r in ready:
                os.read(wake_r, 512)
                if term is not None:
                    _copy_size(term, master)
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = _
                    break
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    data = b""
                if data:
                    os.write(1, data)
                else:
                    watch.remove(master)
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    os.write(master, data)
                else:
                    watch.remove(0)
        while True:  # what the process wrote just before it exited
            try:
                data = os.read(master, 65536) if select.select([master], [], [], 0)[0] else b""
            except OSError:
                data = b""
            if not data:
                break
            os.write(1, data)
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, old_winch)
        signal.signal(signal.SIGCHLD, old_chld)
        signal.set_wakeup_fd(old_wakeup)
        os.close(master)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)
