"""`build` and `push` on the fast path (the hand-written flag parser, no typer: ~45 ms less per call —
a cached rebuild and a push of an unchanged image are mostly start-up). `image build` / `image push`
are the same commands through typer (cli/build_cmds.py, cli/push_cmds.py)."""
from __future__ import annotations

import os
import sys

from pinnace.cli.flags import BOOL, LIST, OPTIONAL, VALUE, Command
from pinnace.cli.flags import Flag as F
from pinnace.errors import InvalidArgument

BUILD_FLAGS = (
    F(("-f", "--file"), "file", VALUE, "Dockerfile (default CONTEXT/Dockerfile or Containerfile); - reads stdin", "FILE"),
    F(("-t", "--tag"), "tag", LIST, "Name the image (repeatable)", "NAME"),
    F(("--build-arg",), "build_arg", LIST, "KEY=VALUE for an ARG (repeatable)", "ARG"),
    F(("--target",), "target", VALUE, "Build up to this stage", "STAGE"),
    F(("--no-cache",), "no_cache", BOOL, "Do not use the build cache"),
    F(("--pull",), "pull", OPTIONAL, "missing (default), always, never; --pull alone = always", "POLICY",
      ("always", "missing", "never", "newer", "true", "false")),
    F(("--label",), "label", LIST, "KEY=VALUE label on the image (repeatable)", "LABEL"),
    F(("--iidfile",), "iidfile", VALUE, "Write the image ID to this file", "FILE"),
    F(("-q", "--quiet"), "quiet", BOOL, "Print only the image ID"),
    F(("--platform",), "platform", VALUE, "Only this host's platform", "PLATFORM"),
    F(("--network",), "network", VALUE, "RUN's network: default, host or none", "MODE"),
    F(("--secret",), "secret", LIST, "id=ID,src=PATH for RUN --mount=type=secret", "SECRET"),
    F(("--layers",), "layers", BOOL, "Accepted (Podman)"),
    F(("--rm",), "rm", BOOL, "Accepted (Docker)"),
    F(("--force-rm",), "force_rm", BOOL, "Accepted (Docker)"),
)

PUSH_FLAGS = (
    F(("-f", "--format"), "format", VALUE, "Manifest type: oci or v2s2 (default: the image's own)", "FORMAT"),
    F(("--compression-format",), "compression", VALUE, "gzip or zstd (default: layers as stored)", "FORMAT"),
    F(("--digestfile",), "digestfile", VALUE, "Write the manifest digest to this file", "FILE"),
    F(("--tls-verify",), "tls_verify", OPTIONAL, "true|false (default: per registries.conf)", "BOOL",
      ("true", "false")),
    F(("--creds",), "creds", VALUE, "USER[:PASSWORD] for the registry", "CREDS"),
    F(("--authfile",), "authfile", VALUE, "Credentials file", "FILE"),
    F(("-q", "--quiet"), "quiet", BOOL, "No progress output"),
)


def pull_policy(value: str | None) -> str:
    if not value:
        return "missing"
    v = value.lower()
    return {"true": "always", "false": "missing", "newer": "always"}.get(v, v)


class BuildPrinter:
    """The builder's events: STEP lines, cache notes and RUN output on stdout (Podman's layout)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.out = sys.stdout.buffer

    def __call__(self, kind: str, payload: object) -> None:
        if self.quiet:
            return
        self.out.write(payload if kind == "output" else f"{payload}\n".encode())  # type: ignore[arg-type]
        self.out.flush()


def build_options(o: dict, positional: list[str]):  # noqa: ANN201 - ImageBuildOptions
    from pinnace.engine.contract import ImageBuildOptions
    if len(positional) > 1:
        raise InvalidArgument("build takes one context (a directory, a tar archive or -)")
    network = o.get("network") or ""
    return ImageBuildOptions(
        context=positional[0] if positional else ".", dockerfile=o.get("file"), tags=tuple(o.get("tag") or ()),
        build_args=tuple(o.get("build_arg") or ()), target=o.get("target"), no_cache=bool(o.get("no_cache")),
        pull=pull_policy(o.get("pull")), labels=tuple(o.get("label") or ()), platform=o.get("platform"),
        network="" if network in ("default", "bridge") else network, secrets=tuple(o.get("secret") or ()),
        stdin=sys.stdin.buffer, environ=tuple(os.environ.items()))


def finish_build(report, o: dict) -> None:  # noqa: ANN001 - ImageBuildReport
    if o.get("iidfile"):
        with open(o["iidfile"], "w") as f:
            f.write(report.image_id)
    out = sys.stdout
    if not o.get("quiet"):
        for name in report.names:
            out.write(f"Successfully tagged {name}\n")
    out.write(report.image_id.removeprefix("sha256:") + "\n")
    out.flush()


def cmd_build(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    report = eng.image_build(build_options(o, positional), BuildPrinter(bool(o.get("quiet"))))
    finish_build(report, o)
    return 0


def cmd_push(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    from pinnace.cli.registry_flags import creds, tls
    from pinnace.engine.contract import ImagePushOptions
    if not positional or len(positional) > 2:
        raise InvalidArgument("push takes an image and optionally a destination")
    if o.get("authfile"):
        os.environ["REGISTRY_AUTH_FILE"] = o["authfile"]
    opts = ImagePushOptions(positional[0], positional[1] if len(positional) > 1 else None, format=o.get("format"),
                            compression=o.get("compression"), tls_verify=tls(o.get("tls_verify")),
                            credentials=creds(o.get("creds")), authfile=o.get("authfile"))
    progress = None
    if not o.get("quiet"):
        from pinnace.cli.progress import make_progress
        from pinnace.cli.push_progress import PushProgress
        inner = make_progress(False)
        progress = PushProgress(inner) if inner is not None else None
    try:
        report = eng.image_push(opts, progress or (lambda ev: None))
    finally:
        if progress is not None:
            progress.close()
    if o.get("digestfile"):
        try:
            with open(o["digestfile"], "w") as f:
                f.write(report.digest)
        except OSError as exc:
            raise InvalidArgument(f"cannot write digest file {o['digestfile']}: {exc.strerror}") from None
    sys.stdout.write(report.digest + "\n")
    return 0


BUILD = Command("build", "build [OPTIONS] [CONTEXT]", "Build an image from a Dockerfile (or Containerfile).", BUILD_FLAGS)
PUSH = Command("push", "push [OPTIONS] IMAGE [DESTINATION]", "Push an image to a registry; prints the manifest digest.",
               PUSH_FLAGS)
