"""The build cache as a user sees it: "Using cache" in the progress output, whether a RUN's own output shows
up (it only does when the step really runs), and the image ID of the result.

Docker's rules: a step is reused when its parent, the instruction, the build args in scope and the content
of the files it reads (content, modes, owners — not mtimes) are unchanged; `--no-cache` reuses nothing.
Every test has its own marker in its Dockerfile, so no test can hit another one's cache entries.
"""
from __future__ import annotations

import os
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from testenv import REGISTRY

pytestmark = pytest.mark.anyuser  # rootless as the test user, and again as root

BUSYBOX = f"{REGISTRY}/fixtures/busybox:latest"


@pytest.fixture(scope="module")
def store(module_pinnace):
    module_pinnace("pull", "-q", BUSYBOX)
    return module_pinnace


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def project(tmp_path: Path) -> tuple[Path, str]:
    """A context: RUN, COPY a, COPY b, RUN, ENV after FROM (5 cacheable steps); returns (dir, marker)."""
    marker = uuid.uuid4().hex[:10]
    write(tmp_path / "Dockerfile", textwrap.dedent(f"""\
        FROM {BUSYBOX}
        RUN echo FIRST-RAN-{marker} && echo one > /one
        COPY a.txt /app/a.txt
        COPY b.txt /app/b.txt
        RUN echo LAST-RAN-{marker} && cat /app/a.txt /app/b.txt > /seen
        ENV DONE=1
        """))
    write(tmp_path / "a.txt", "a\n")
    write(tmp_path / "b.txt", "b\n")
    return tmp_path, marker


def build(p, ctx: Path, *args: str) -> tuple[str, str, list[str]]:
    """(image ID, stdout, the "Using cache" lines)."""
    res = p("build", *args, str(ctx))
    return res.out.strip().splitlines()[-1], res.out, [l for l in res.out.splitlines() if "Using cache" in l]


def ran(out: str) -> list[str]:
    """The output lines of RUN commands that really ran (STEP lines only show the instruction)."""
    return [l for l in out.splitlines() if "RAN-" in l and not l.startswith("STEP ")]


def seen(p, iid: str) -> str:
    return p("run", "--rm", iid, "cat", "/seen").out


def test_identical_rebuild_is_all_cached_and_no_cache_rebuilds_all(store, tmp_path):
    ctx, marker = project(tmp_path)
    first, out, cached = build(store, ctx, "-t", "localhost/cache-a")
    assert cached == [] and ran(out) == [f"FIRST-RAN-{marker}", f"LAST-RAN-{marker}"]
    again, out, cached = build(store, ctx, "-t", "localhost/cache-a")
    assert len(cached) == 5, out                     # every step after FROM
    assert ran(out) == []                            # no RUN ran
    assert again == first                            # the very same image
    fresh, out, cached = build(store, ctx, "--no-cache")
    assert cached == [] and ran(out) == [f"FIRST-RAN-{marker}", f"LAST-RAN-{marker}"]
    assert seen(store, fresh) == "a\nb\n"


def test_touching_a_copied_file_keeps_the_cache(store, tmp_path):
    ctx, marker = project(tmp_path)
    first, _, _ = build(store, ctx)
    future = time.time() + 3600
    os.utime(ctx / "b.txt", (future, future))
    os.utime(ctx / "a.txt", (future, future))
    again, out, cached = build(store, ctx)
    assert len(cached) == 5 and ran(out) == [] and again == first


def test_changed_content_rebuilds_from_that_copy_on(store, tmp_path):
    ctx, marker = project(tmp_path)
    first, _, _ = build(store, ctx)
    write(ctx / "b.txt", "b, edited\n")
    second, out, cached = build(store, ctx)
    # RUN (first) and COPY a.txt come from the cache; COPY b.txt, the last RUN and ENV are done again
    assert len(cached) == 2, out
    assert ran(out) == [f"LAST-RAN-{marker}"]
    assert second != first and seen(store, second) == "a\nb, edited\n"
    # the old result is still in the cache: going back to the old content reuses everything
    write(ctx / "b.txt", "b\n")
    third, out, cached = build(store, ctx)
    assert len(cached) == 5 and third == first


def test_changed_mode_rebuilds_from_that_copy_on(store, tmp_path):
    ctx, marker = project(tmp_path)
    build(store, ctx)
    os.chmod(ctx / "a.txt", 0o755)
    iid, out, cached = build(store, ctx)
    assert len(cached) == 1 and ran(out) == [f"LAST-RAN-{marker}"]
    assert store("run", "--rm", iid, "stat", "-c", "%a", "/app/a.txt").out == "755\n"


def test_build_arg_change_reruns_only_the_steps_in_its_scope(store, tmp_path):
    marker = uuid.uuid4().hex[:10]
    write(tmp_path / "Dockerfile", textwrap.dedent(f"""\
        FROM {BUSYBOX}
        RUN echo BEFORE-RAN-{marker} && echo before > /before
        ARG V=1
        RUN echo AFTER-RAN-{marker} $V && echo $V > /after
        """))
    build(store, tmp_path)
    iid, out, cached = build(store, tmp_path, "--build-arg", "V=2")
    assert ran(out) == [f"AFTER-RAN-{marker} 2"]
    assert store("run", "--rm", iid, "cat", "/after").out == "2\n"
    again, out, _ = build(store, tmp_path, "--build-arg", "V=2")
    assert ran(out) == [] and again == iid


def test_ignored_files_do_not_touch_the_cache(store, tmp_path):
    marker = uuid.uuid4().hex[:10]
    write(tmp_path / "Dockerfile", f"FROM {BUSYBOX}\nCOPY . /ctx/\nRUN echo RAN-{marker} && ls /ctx > /seen\n")
    write(tmp_path / ".dockerignore", "scratch.log\n")
    write(tmp_path / "kept.txt", "kept\n")
    write(tmp_path / "scratch.log", "one\n")
    first, _, _ = build(store, tmp_path)
    write(tmp_path / "scratch.log", "two, and longer\n")
    again, out, cached = build(store, tmp_path)
    assert len(cached) == 2 and ran(out) == [] and again == first
    assert seen(store, again).split() == ["Dockerfile", "kept.txt"]


def test_rebuild_after_the_image_was_removed(store, tmp_path):
    ctx, marker = project(tmp_path)
    first, _, _ = build(store, ctx, "-t", "localhost/cache-gone")
    store("rmi", "localhost/cache-gone")
    iid, out, _ = build(store, ctx, "-t", "localhost/cache-gone")
    assert seen(store, iid) == "a\nb\n"
