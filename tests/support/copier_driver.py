"""Runs builder/copier.py operations where ownership is real, inside `pinnace unshare` (the holder's user
namespace when rootless; a plain exec as root):

    pinnace unshare PYTHON copier_driver.py < ops.json

stdin is a JSON list of operations, each run in order; stdout is a JSON list with one result per operation
({"error": "<class>", "message": "..."} when it raised). Operations:

    {"op": "chown", "path": P, "uid": U, "gid": G, "mode": M?}   lchown, then chmod when "mode" is given (a
                                                            chown clears setuid): sources with foreign owners
    {"op": "copy", "rootfs": R, "items": [ITEM...], "dest": D, "kw": {...}}       copier.copy_into
    {"op": "copy_from", "src": R2, "patterns": [...], "rootfs": R, "dest": D, "kw": {...}}
                                                            resolve_from_rootfs(R2, ...) then copy_into
    {"op": "stat", "paths": [P...]}                          {P: [uid, gid, mode (octal string), kind]}
    {"op": "rmtree", "path": P}                              remove what the namespace's ids own

ITEM is a CopyItem's fields as a dict ("data" as text).
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import sys

from pinnace.builder.copier import CopyItem, copy_into, resolve_from_rootfs


def _item(d: dict) -> CopyItem:
    data = d.get("data")
    return CopyItem(**{**d, "data": data.encode() if isinstance(data, str) else data})


def _stat(path: str) -> list:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    kind = "dir" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) else "file"
    return [st.st_uid, st.st_gid, oct(stat.S_IMODE(st.st_mode)), kind]


def run(op: dict):
    name = op["op"]
    if name == "chown":
        os.lchown(op["path"], op["uid"], op["gid"])
        if "mode" in op:
            os.chmod(op["path"], op["mode"])
        return None
    if name == "copy":
        return copy_into(op["rootfs"], [_item(i) for i in op["items"]], op["dest"], **op.get("kw", {}))
    if name == "copy_from":
        items = resolve_from_rootfs(op["src"], op["patterns"])
        return copy_into(op["rootfs"], items, op["dest"], **op.get("kw", {}))
    if name == "stat":
        return {p: _stat(p) for p in op["paths"]}
    if name == "rmtree":
        shutil.rmtree(op["path"], ignore_errors=True)
        return os.path.lexists(op["path"])
    raise ValueError(f"unknown op {name}")


def main() -> int:
    results = []
    for op in json.load(sys.stdin):
        try:
            results.append(run(op))
        except Exception as e:  # noqa: BLE001 - reported to the test, which asserts on it
            results.append({"error": type(e).__name__, "message": str(e)})
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
