"""The metadata database under concurrent use: threads of one command, and several processes."""
from __future__ import annotations

import multiprocessing
import threading

from pinnace.storage.db import Database


def _insert(db: Database, prefix: str, n: int, errors: list) -> None:
    try:
        for i in range(n):
            with db.transaction() as c:
                c.execute("INSERT INTO layers VALUES (?,?,?,?,?,?)", (f"sha256:{prefix}-{i}", 1, 1, 0, 0, 0.0))
            db.query("SELECT COUNT(*) FROM layers")
    except Exception as exc:  # noqa: BLE001 - collected for the assertion
        errors.append(exc)


def test_threads_share_one_connection(tmp_path):
    # parallel layer downloads record their layers through the command's one connection
    db = Database(tmp_path / "state.db")
    errors: list = []
    threads = [threading.Thread(target=_insert, args=(db, f"t{k}", 100, errors)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert db.query("SELECT COUNT(*) FROM layers")[0][0] == 600


def _process(path: str, prefix: str) -> None:
    errors: list = []
    _insert(Database(path), prefix, 100, errors)
    if errors:
        raise SystemExit(str(errors[0]))


def test_processes_share_the_file(tmp_path):
    path = str(tmp_path / "state.db")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_process, args=(path, f"p{k}")) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert Database(path).query("SELECT COUNT(*) FROM layers")[0][0] == 400
