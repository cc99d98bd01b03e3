"""Hot commands stay light: `--version` and `images` import neither typer, rich, nor the registry client."""
from __future__ import annotations

import subprocess
import sys

from testenv import PINNACE_BIN  # noqa: F401  (same interpreter as the installed console script)

HEAVY = ("typer", "rich", "urllib3", "pinnace.registry.client", "pinnace.registry.transport", "zstandard",
         "pinnace.storage.layer_apply", "platformdirs", "pydantic")


def _imported(args: list[str], tmp_path) -> set[str]:
    code = ("import sys; from pinnace.__main__ import main; rc = main(sys.argv[1:]); "
            "sys.stderr.write('\\nMODULES ' + ' '.join(sorted(sys.modules)) + '\\n'); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    line = [l for l in proc.stderr.splitlines() if l.startswith("MODULES ")][-1]
    return set(line.split()[1:])


def test_version_is_light(tmp_path):
    mods = _imported(["--version"], tmp_path)
    assert not [m for m in mods if m.split(".")[0] in ("typer", "rich", "urllib3", "sqlite3")]


def test_images_is_light(tmp_path):
    from testenv import REGISTRY
    base = [PINNACE_BIN, "--root", str(tmp_path / "r"), "--runroot", str(tmp_path / "rr")]
    assert subprocess.run(base + ["pull", "-q", f"{REGISTRY}/fixtures/busybox"], capture_output=True).returncode == 0
    mods = _imported(["--root", str(tmp_path / "r"), "--runroot", str(tmp_path / "rr"), "images"], tmp_path)
    heavy = [m for m in mods if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert heavy == [], heavy
    mods = _imported(["--root", str(tmp_path / "r"), "--runroot", str(tmp_path / "rr"), "images", "--format", "json"],
                     tmp_path)
    assert not [m for m in mods if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    subprocess.run(base + ["system", "reset", "-f"], capture_output=True)


def test_fast_path_and_typer_print_the_same(tmp_path):
    from testenv import REGISTRY
    base = [PINNACE_BIN, "--root", str(tmp_path / "r"), "--runroot", str(tmp_path / "rr")]
    for name in ("busybox", "busybox-layers"):
        assert subprocess.run(base + ["pull", "-q", f"{REGISTRY}/fixtures/{name}"], capture_output=True).returncode == 0
    # --log-level is not taken by the fast path: the second command of each pair runs through typer
    for args in (["images"], ["images", "-q"], ["images", "--digests", "--no-trunc"], ["images", "--format", "json"],
                 ["images", "--format", "{{.ID}} {{.Size}}"], ["images", "--filter", "reference=*layers*"]):
        fast = subprocess.run(base + args, capture_output=True, text=True)
        slow = subprocess.run(base[:1] + ["--log-level", "warn"] + base[1:] + args, capture_output=True, text=True)
        assert fast.returncode == slow.returncode == 0 and fast.stdout == slow.stdout and fast.stdout, args
    subprocess.run(base + ["system", "reset", "-f"], capture_output=True)
    bad = subprocess.run(base + ["images", "--nonsense"], capture_output=True, text=True)
    assert bad.returncode == 125 and bad.stderr.startswith("Error:") and "nonsense" in bad.stderr
