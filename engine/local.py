"""LocalEngine: the engine contract implemented on this machine's per-user store.

The CLI (and later the REST API) call only these methods. Heavy modules (registry client, tar code)
are imported inside the verbs that need them, so `images` and `--version` stay fast.
"""
from __future__ import annotations

from pathlib import Path
TYPE_CHECKING = False  # typing and the contract's records cost ~8 ms at start-up; `run` is a hot path
if TYPE_CHECKING:
    from typing import BinaryIO

    from pinnace.engine.container_contract import ContainerCreateOptions, ContainerSummary, ExecOptions
    from pinnace.engine.contract import (CheckReport, DiskUsageRow, HistoryEntry, ImageImportOptions,
                                         ImageListOptions, ImageLoadReport, ImagePruneOptions, ImagePullOptions,
                                         ImagePullReport, ImageRemoveOptions, ImageRemoveReport, ImageSaveOptions,
                                         ImageSummary, LoginOptions, ProgressCallback)

from pinnace.engine.config import EngineConfig
from pinnace.engine.store import Store


class LocalEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.store = Store(config)

    def close(self) -> None:
        self.store.close()

    # -- images ------------------------------------------------------------------------------------
    def image_pull(self, opts: ImagePullOptions, progress: ProgressCallback | None = None) -> ImagePullReport:
        from pinnace.engine.contract import no_progress
        from pinnace.engine.pull import pull_image
        return pull_image(self.store, opts, progress or no_progress)

    def image_list(self, opts: ImageListOptions) -> list[ImageSummary]:
        from pinnace.engine.image_list import list_images
        return list_images(str(self.config.root), opts.filters)

    def image_inspect(self, name: str) -> dict:
        from pinnace.engine.images import inspect_image
        return inspect_image(self.store, name)

    def image_history(self, name: str) -> list[HistoryEntry]:
        from pinnace.engine.images import image_history
        return image_history(self.store, name)

    def image_tag(self, source: str, targets: tuple[str, ...]) -> None:
        from pinnace.engine.images import tag_image
        tag_image(self.store, source, targets)

    def image_untag(self, name: str, names: tuple[str, ...]) -> list[str]:
        from pinnace.engine.images import untag_image
        return untag_image(self.store, name, names)

    def image_remove(self, opts: ImageRemoveOptions) -> ImageRemoveReport:
        from pinnace.engine.images import remove_images
        self.store.open_for_write()
        return remove_images(self.store, opts)

    def image_prune(self, opts: ImagePruneOptions) -> list[str]:
        from pinnace.engine.images import prune_images
        self.store.open_for_write()
        return prune_images(self.store, opts)

    def image_save(self, opts: ImageSaveOptions, out: BinaryIO) -> None:
        from pinnace.engine.archive import save_images
        save_images(self.store, opts, out)

    def image_load(self, archive: BinaryIO) -> ImageLoadReport:
        from pinnace.engine.archive import load_images
        return load_images(self.store, archive)

    def image_import(self, opts: ImageImportOptions, source: BinaryIO) -> str:
        from pinnace.engine.archive import import_tarball
        return import_tarball(self.store, opts, source)

    def image_mount(self, name: str) -> Path:
        from pinnace.engine.mount import mount_image
        return mount_image(self.store, name)

    def image_unmount(self, name: str) -> bool:
        from pinnace.engine.mount import unmount_image
        return unmount_image(self.store, name)

    def image_mounts(self) -> list[tuple[str, Path]]:
        from pinnace.engine.mount import mounted_images
        return mounted_images(self.store)

    def spool_dir(self) -> Path:
        """Where the CLI may spool a stream (stdin archives) on the store's filesystem."""
        self.store.layout.create_dirs()
        return self.store.layout.tmp_dir

    # -- containers -------------------------------------------------------------------------------------
    def container_create(self, opts: ContainerCreateOptions, progress: ProgressCallback | None = None) -> str:
        from pinnace.engine.container_create import create_container
        return create_container(self.store, opts, progress)

    def container_start(self, name: str, *, attach: bool = False) -> tuple[str, int | None]:
        """Start; with `attach` also return a connected attach socket (the caller relays the stdio)."""
        from pinnace.engine import containers
        c, sock = containers.start(self.store, name, attach=attach)
        return c.id, sock

    def container_attach(self, name: str) -> int:
        from pinnace.engine import containers
        return containers.connect_attach(containers.get(self.store, name))

    def container_stop(self, name: str, timeout: float | None = None) -> str:
        from pinnace.engine import containers
        return containers.stop(self.store, name, timeout).id

    def container_kill(self, name: str, signal: str | None = None) -> str:
        from pinnace.engine import containers
        return containers.kill(self.store, name, containers.parse_signal(signal, default=9)).id

    def container_remove(self, name: str, *, force: bool = False, volumes: bool = False,
                         timeout: float | None = None) -> str:
        from pinnace.engine import containers
        return containers.remove(self.store, name, force=force, volumes=volumes, timeout=timeout)

    def container_wait(self, name: str, conditions: tuple[str, ...] = ("stopped",)) -> int:
        from pinnace.engine import containers
        return containers.wait(self.store, name, conditions)

    def container_list(self, *, all: bool = False, filters: tuple[str, ...] = ()) -> list[ContainerSummary]:
        from pinnace.engine.container_view import list_containers
        return list_containers(self.store, all=all, filters=filters)

    def container_inspect(self, name: str) -> dict:
        from pinnace.engine.container_view import inspect
        return inspect(self.store, name)

    def container_rename(self, name: str, new: str) -> None:
        from pinnace.engine import containers
        containers.rename(self.store, name, new)

    def container_prune(self, filters: tuple[str, ...] = ()) -> list[str]:
        from pinnace.engine import containers
        return containers.prune(self.store, filters)

    def container_cleanup(self, name: str) -> str:
        from pinnace.engine import containers
        return containers.cleanup(self.store, name).id

    def container_pause(self, name: str) -> str:
        from pinnace.engine import containers
        return containers.pause(self.store, name).id

    def container_unpause(self, name: str) -> str:
        from pinnace.engine import containers
        return containers.unpause(self.store, name).id

    def container_logs(self, name: str, **kw: object):  # noqa: ANN201 - iterator of LogLine
        from pinnace.engine.container_ops import logs
        return logs(self.store, name, **kw)

    def container_top(self, name: str) -> list[dict]:
        from pinnace.engine.container_ops import top
        return top(self.store, name)

    def container_stats(self, name: str) -> dict:
        from pinnace.engine.container_ops import stats
        return stats(self.store, name)

    def container_mount(self, name: str) -> Path:
        from pinnace.engine.container_ops import mount
        return mount(self.store, name)

    def container_unmount(self, name: str) -> None:
        from pinnace.engine.container_ops import unmount
        unmount(self.store, name)

    def container_exec(self, opts: ExecOptions, stdio: tuple[int, int, int] | None = None) -> int:
        """Start a process in the container; the pid to wait for (`exec_wait`)."""
        from pinnace.engine.container_ops import exec_start
        return exec_start(self.store, opts, stdio)

    def exec_wait(self, pid: int) -> int:
        from pinnace.runtime.executor import wait_exit
        return wait_exit(pid)

    def container_diff(self, name: str) -> list[tuple[str, str]]:
        from pinnace.engine.container_ops import diff
        return diff(self.store, name)

    def container_export(self, name: str, out: BinaryIO) -> None:
        from pinnace.engine.container_ops import export
        export(self.store, name, out)

    def container_copy(self, src: str, dest: str, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
        from pinnace.engine.container_ops import copy
        copy(self.store, src, dest, stdin, stdout)

    def container_commit(self, name: str, image: str | None, *, author: str = "", message: str = "",
                         changes: tuple[str, ...] = (), pause: bool = True) -> str:
        from pinnace.engine.container_ops import commit
        return commit(self.store, name, image, author=author, message=message, changes=changes)

    # -- volumes ----------------------------------------------------------------------------------------
    def volume_create(self, name: str | None, labels: tuple[str, ...] = (), options: tuple[str, ...] = (),
                      driver: str = "local", ignore_existing: bool = False) -> dict:
        from pinnace.engine.volumes import inspect_dict, parse_pairs, volume_store
        from pinnace.errors import Conflict
        self.store.open_for_write()
        vs = volume_store(self.store)
        try:
            record = vs.create(name, labels=parse_pairs(labels, "label"), options=parse_pairs(options, "option"),
                               driver=driver)
        except Conflict:
            if not ignore_existing:
                raise
            record = vs.get(name)
        return inspect_dict(record)

    def volume_list(self, filters: tuple[str, ...] = ()) -> list[dict]:
        from pinnace.engine.volumes import inspect_dict, list_volumes
        return [inspect_dict(v) for v in list_volumes(self.store, filters)]

    def volume_inspect(self, name: str) -> dict:
        from pinnace.engine.volumes import inspect_dict, volume_store
        if not self.store.layout.db_path.exists():
            from pinnace.errors import NotFound
            raise NotFound(f"no such volume {name}")
        return inspect_dict(volume_store(self.store).get(name))

    def volume_remove(self, name: str, force: bool = False) -> None:
        from pinnace.engine.volumes import volume_store
        self.store.open_for_write()  # volume files may belong to any id of the user namespace
        volume_store(self.store).remove(name, force=force)

    def volume_prune(self, filters: tuple[str, ...] = ()) -> list[str]:
        from pinnace.engine.volumes import prune_volumes
        self.store.open_for_write()
        return prune_volumes(self.store, filters)

    # -- registries -----------------------------------------------------------------------------------
    def login(self, opts: LoginOptions) -> Path:
        from pinnace.engine.auth import login
        return login(opts)

    def logout(self, registry: str | None, *, all: bool = False, authfile: str | None = None) -> bool:
        from pinnace.engine.auth import logout
        return logout(registry, all=all, authfile=authfile)

    # -- system -----------------------------------------------------------------------------------------
    def system_info(self) -> dict:
        from pinnace.engine.system import system_info
        return system_info(self.store)

    def system_df(self) -> list[DiskUsageRow]:
        from pinnace.engine.system import disk_usage
        return disk_usage(self.store)

    def system_check(self, repair: bool = False) -> CheckReport:
        from pinnace.engine.system import check_store
        return check_store(self.store, repair)

    def system_reset(self) -> None:
        from pinnace.engine.system import reset_store
        reset_store(self.store)

    def unshare(self, argv: list[str]) -> None:
        """Replace this process with argv inside the user and mount namespace (never returns)."""
        from pinnace.runtime.userns import exec_in_namespace
        self.store.layout.runroot.mkdir(parents=True, exist_ok=True)
        exec_in_namespace(self.store.layout.runroot, argv)  # as root: no namespace to join, plain exec

    # -- networks ---------------------------------------------------------------------------------------
    def network_create(self, opts: NetworkCreateOptions) -> dict:
        from pinnace.engine.networks import create_network, inspect_dict
        return inspect_dict(self.store, create_network(self.store, opts))

    def network_list(self, filters: tuple[str, ...] = ()) -> list[dict]:
        from pinnace.engine.networks import inspect_dict, list_networks
        return [inspect_dict(self.store, n) for n in list_networks(self.store, filters)]

    def network_inspect(self, name: str) -> dict:
        from pinnace.engine.networks import get_network, inspect_dict
        return inspect_dict(self.store, get_network(self.store, name))

    def network_exists(self, name: str) -> bool:
        from pinnace.engine.networks import get_network
        from pinnace.errors import NotFound
        try:
            get_network(self.store, name)
        except NotFound:
            return False
        return True

    def network_remove(self, name: str, force: bool = False, timeout: float | None = None) -> str:
        from pinnace.engine.networks import remove_network
        return remove_network(self.store, name, force=force, timeout=timeout)

    def network_prune(self, filters: tuple[str, ...] = ()) -> list[str]:
        from pinnace.engine.networks import prune_networks
        return prune_networks(self.store, filters)

    def network_connect(self, network: str, container: str, aliases: tuple[str, ...] = ()) -> None:
        from pinnace.engine.networks import connect
        connect(self.store, network, container, aliases)

    def network_disconnect(self, network: str, container: str, force: bool = False) -> None:
        from pinnace.engine.networks import disconnect
        disconnect(self.store, network, container, force=force)

    # -- push (issue 5) ---------------------------------------------------------------------------------
    def image_push(self, opts: ImagePushOptions, progress: ProgressCallback | None = None) -> ImagePushReport:
        from pinnace.engine.contract import no_progress
        from pinnace.engine.push import push_image
        return push_image(self.store, opts, progress or no_progress)

    def image_build(self, opts: "ImageBuildOptions", emit) -> "ImageBuildReport":  # noqa: ANN001
        """Build an image from a Dockerfile; `emit(kind, payload)` receives the progress (engine/build.py)."""
        from pinnace.engine.build import build_image
        return build_image(self.store, opts, emit)


if TYPE_CHECKING:
    from pinnace.engine.network_contract import NetworkCreateOptions
    from pinnace.engine.contract import ImageBuildOptions, ImageBuildReport, ImagePushOptions, ImagePushReport
