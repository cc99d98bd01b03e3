"""RUN: the command runs in a short-lived, unlisted container on the image-so-far, and its changes become a
layer.

The step directory is a container directory (`<root>/containers/<id>/`, no database record, so `ps`
never shows it): the overlay of the current layers is mounted at `merged/` with a fresh upper `diff/`,
a config.json is written, and the ordinary supervisor is forked with an attached socket — so RUN gets
exactly what `run` gets (namespaces, the default user-mode network with DNS, stdio framing, the exit
code after clean-up). When it has exited (and the supervisor unmounted the rootfs), `diff/` minus the
mount points the runtime had to create is the new layer.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from pinnace.engine.store import Store
from pinnace.runtime import ctrstate

ANN = "io.pinnace."
Output = Callable[[str, bytes], None]   # (stream "stdout"|"stderr", data)


def new_step_dir(store: Store) -> Path:
    store.layout.containers_dir.mkdir(mode=0o700, exist_ok=True)
    path = store.layout.containers_dir / os.urandom(32).hex()
    path.mkdir(mode=0o700)
    for sub in ("diff", "work", "merged"):
        (path / sub).mkdir(mode=0o700 if sub == "work" else 0o755)
    return path


def mount_step(store: Store, step: Path, layers: list[str]) -> None:
    """The overlay of `layers` (diff-ids, lowest first) with the step's own upper dir at step/merged."""
    from pinnace.engine.container_create import mount_rootfs
    mount_rootfs(store, step, [store.layout.layer_path(d).name for d in layers], volatile=True)


def run_command(store: Store, step: Path, *, config: dict, argv: list[str], env: list[str], user: str | None,
                workdir: str, network: str, mounts: list[dict], output: Output) -> int:
    """Run argv in the mounted step rootfs; returns its exit code. The rootfs is unmounted afterwards and
    the upper dir holds only what the command changed."""
    from pinnace.engine.container_contract import ContainerCreateOptions
    from pinnace.engine.container_create import _etc_files
    from pinnace.engine.container_network import NetworkChoice
    from pinnace.runtime.spec import ProcessOptions, build_spec
    from pinnace.runtime.users import resolve_user
    cid = step.name
    rootfs = step / "merged"
    mode = network if network in ("host", "none") else "usermode"
    choice = NetworkChoice(mode, annotations={ANN + "network": "usermode"} if mode == "usermode" else {})
    hostname = cid[:12]
    etc = _etc_files(step, ContainerCreateOptions(image="build", network=mode), hostname, choice)
    exec_user = resolve_user(rootfs, user or None)
    opts = ProcessOptions(command=tuple(argv), entrypoint="", env=tuple(env), workdir=workdir, hostname=hostname)
    spec = build_spec(image_config=config, opts=opts, user=exec_user, rootfs=str(rootfs), own_netns=mode != "host",
                      rootless=store.config.rootless, extra_mounts=etc + mounts)
    spec["annotations"].update(choice.annotations)
    spec["annotations"].update({ANN + "id": cid, ANN + "name": "build-" + cid[:12], ANN + "root": str(store.layout.root),
                                ANN + "runroot": str(store.layout.runroot), ANN + "restart": "no",
                                ANN + "autoremove": "false", ANN + "stdin": "false"})
    created = [m["destination"] for m in spec["mounts"] if not os.path.lexists(_inside(rootfs, m["destination"]))]
    (step / "config.json").write_text(json.dumps(spec))
    ctrstate.write_state(str(step), {"status": ctrstate.CREATED})
    code = _supervise(store, step, output)
    from pinnace.runtime.rootfs import driver_for
    _remove_stubs(driver_for(store.driver_name(), rootless=store.config.rootless).stub_root(step), created)
    return code


def _supervise(store: Store, step: Path, output: Output) -> int:
    import socket
    from pinnace.runtime import attach_proto as proto
    from pinnace.runtime.supervisor import start_supervisor
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    store.close_db()  # the forked supervisor must not share our SQLite connection
    try:
        start_supervisor(str(step), str(store.layout.runroot), fresh=False, client_fd=theirs.fileno())
    finally:
        theirs.close()
    reader = proto.FrameReader()
    code = None
    with mine:
        while code is None:
            data = mine.recv(1 << 16)
            if not data:
                break
            for kind, payload in reader.feed(data):
                if kind == proto.OUT:
                    output("stdout", payload)
                elif kind == proto.ERR:
                    output("stderr", payload)
                elif kind == proto.EXIT:
                    code = int(payload or b"0")
    if code is None:
        from pinnace.errors import PinnaceError
        raise PinnaceError("the build step's supervisor went away without an exit code")
    return code


def _inside(rootfs: Path, path: str) -> str:
    return os.path.join(str(rootfs), path.lstrip("/"))


def _remove_stubs(upper: Path, created: list[str]) -> None:
    """Mount points the runtime created in the rootfs (/etc/hosts in an image without one, a secret's
    /run/secrets) are not the command's output: drop them from the layer when they are still empty, and
    the directories made only to hold them."""
    for dest in sorted(created, key=len, reverse=True):
        path = Path(_inside(upper, dest))
        try:
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            elif path.is_file() and path.stat().st_size == 0:
                path.unlink()
            else:
                continue
        except OSError:
            continue  # the command put something there: it stays
        parent = path.parent
        while parent != upper and not any(_inside(upper, d) == str(parent) for d in created):
            try:
                parent.rmdir()  # only succeeds while empty
            except OSError:
                break
            parent = parent.parent


def remove_step_dir(step: Path) -> None:
    from pinnace.runtime import mounts as rmounts
    from pinnace.storage.layers import remove_tree
    rmounts.unmount(step / "merged")
    remove_tree(step)
