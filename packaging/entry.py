"""PyInstaller entry script: the frozen `pinnace` executable starts here.

Before handing over to pinnace.__main__.main() (which dispatches the hidden helper roles `__supervise`,
`__fuse-overlay`, … before importing typer, exactly as the console script does), it does the two things
only a frozen build needs:

1. It gives this process back the environment the user started it with. The bootloader (or
   packaging/launcher.sh on its behalf) put the bundle's _internal/ first on LD_LIBRARY_PATH, kept the
   user's value in LD_LIBRARY_PATH_ORIG, and set _PYI_* variables. The dynamic loader read
   LD_LIBRARY_PATH when this process started and keeps using that copy for every later dlopen, so
   restoring it here changes nothing for us — but every program pinnace starts (newuidmap, runc, crun,
   pasta, slirp4netns, `unshare CMD`, the helpers' own children), whatever code path starts it, inherits
   the user's library path instead of the bundle's, whose libraries (libz, liblzma, libssl, …) would
   otherwise replace the host's in those programs. This is the one place that does it. Helpers that
   re-execute this executable (the supervisor, the fuse daemon) start like a fresh run: the bootloader
   sets the library path again.
2. When the unpacked bundle is damaged (files deleted or truncated after it was unpacked by
   packaging/launcher.sh), it says so, marks the bundle for unpacking again, and — when nothing has run
   yet — re-runs the launcher, which unpacks a fresh copy.
"""
import os
import sys

LAUNCHER_VAR = "PINNACE_LAUNCHER"       # set by packaging/launcher.sh: the one file the user runs
REPAIR_VAR = "PINNACE_LAUNCHER_REPAIR"  # set while re-running the launcher after a repair (no loops)
MARKER = ".complete"                    # packaging/launcher.sh: the bundle was unpacked completely
MANIFEST = ".manifest"                  # packaging/build: "size path" of every file of the bundle


def _restore_host_environment() -> None:
    env = os.environ
    orig = env.get("LD_LIBRARY_PATH_ORIG")
    if orig:
        # The user's own value, back in place. LD_LIBRARY_PATH_ORIG stays, equal to it: helpers written
        # for PyInstaller's convention (runtime/userns.py host_program_env) then also arrive at it, and
        # a PyInstaller program started from here replaces it anyway.
        env["LD_LIBRARY_PATH"] = orig
    else:
        env.pop("LD_LIBRARY_PATH", None)
        env.pop("LD_LIBRARY_PATH_ORIG", None)
    for key in [k for k in env if k.startswith("_PYI_") or k == "_MEIPASS2"]:
        del env[key]


def _damaged_files(bundle: str) -> list[str]:
    """Files of the bundle that are missing or have the wrong size, by its manifest (empty: intact)."""
    bad = []
    try:
        with open(os.path.join(bundle, MANIFEST), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return [MANIFEST]
    for line in lines:
        size, _, name = line.partition(" ")
        try:
            if os.lstat(os.path.join(bundle, name)).st_size != int(size):
                bad.append(name)
        except (OSError, ValueError):
            bad.append(name)
    return bad


def _repair_or_raise(exc: BaseException, *, rerun: bool) -> None:
    """An import failed: if the bundle is damaged, mark it for unpacking again (and re-run the launcher
    when `rerun`); if it is intact, the error is a real one and propagates."""
    bundle = os.path.dirname(os.path.abspath(sys.executable))
    bad = _damaged_files(bundle)
    if not bad:
        raise exc
    try:
        os.unlink(os.path.join(bundle, MARKER))
    except FileNotFoundError:
        pass
    except OSError:
        raise exc from None
    launcher = os.environ.get(LAUNCHER_VAR)
    shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    if rerun and launcher and not os.environ.get(REPAIR_VAR) and os.access(launcher, os.X_OK):
        sys.stderr.write(f"pinnace: the unpacked copy in {bundle} is damaged ({shown}): unpacking it again\n")
        sys.stderr.flush()
        os.environ[REPAIR_VAR] = "1"
        os.execv(launcher, [launcher, *sys.argv[1:]])
    sys.stderr.write(f"Error: the unpacked copy of pinnace in {bundle} is damaged ({shown}); "
                     "it will be unpacked again on the next run\n")
    sys.exit(126)


if __name__ == "__main__":
    _restore_host_environment()
    # A missing module is an ImportError; a truncated .pyc an EOFError or ValueError (bad marshal data).
    try:
        from pinnace.__main__ import main
    except (ImportError, EOFError, ValueError) as exc:  # nothing has run yet: unpack again, start over
        _repair_or_raise(exc, rerun=True)
    os.environ.pop(REPAIR_VAR, None)
    try:
        code = main()
    except (ImportError, EOFError, ValueError) as exc:  # a command was under way: never run it twice
        _repair_or_raise(exc, rerun=False)
    sys.exit(code)
