"""Named volumes: volume create, ls, inspect, rm, prune (their use by containers comes with issue 3)."""
from __future__ import annotations

import os
import sqlite3

import pytest

pytestmark = pytest.mark.anyuser


def test_create_list_inspect_remove(pinnace):
    assert pinnace("volume", "create", "--label", "team=a", "data").out == "data\n"
    anon = pinnace("volume", "create").out.strip()
    assert len(anon) == 64
    table = pinnace("volume", "ls").out.splitlines()
    assert table[0].split() == ["DRIVER", "VOLUME", "NAME"] and len(table) == 3
    info = pinnace("volume", "inspect", "data").json()[0]
    assert info["Name"] == "data" and info["Labels"] == {"team": "a"} and info["Driver"] == "local"
    assert os.path.isdir(info["Mountpoint"]) and info["Mountpoint"].startswith(str(pinnace.root))
    assert pinnace("volume", "ls", "-q", "--filter", "label=team=a").out == "data\n"
    assert pinnace("volume", "ls", "--format", "{{.Name}}", "--filter", "name=da*").out == "data\n"
    res = pinnace("volume", "create", "data", check=False)
    assert res.rc == 125 and "already exists" in res.err
    assert pinnace("volume", "create", "--ignore", "data").out == "data\n"
    for bad in ("x", "-bad", "a/b"):
        assert pinnace("volume", "create", "--", bad, check=False).rc == 125
    pinnace("volume", "rm", "data")
    assert not os.path.exists(info["Mountpoint"])
    res = pinnace("volume", "inspect", "data", check=False)
    assert res.rc == 125 and "no such volume" in res.err
    assert pinnace("volume", "ls", "-q").out == anon + "\n"


def test_files_of_other_ids_are_removed_too(pinnace):
    mountpoint = pinnace("volume", "inspect", "--format", "{{.Mountpoint}}", pinnace("volume", "create").out.strip()
                         ).out.strip()
    # as a container would leave them: owned by uid 1000 inside (a subordinate id outside), not writable
    pinnace("unshare", "sh", "-c", f"mkdir -p {mountpoint}/d && echo x > {mountpoint}/d/f && "
            f"chown -R 1000:1000 {mountpoint}/d && chmod 0500 {mountpoint}/d")
    df = {r["Type"]: r for r in pinnace("system", "df", "--format", "json").json()}
    assert df["Local Volumes"]["Total"] == 1
    assert pinnace("volume", "prune", "-f").out.strip() != ""
    assert pinnace("volume", "ls", "-q").out == ""
    assert not os.path.exists(mountpoint)


def test_prune_and_in_use(pinnace):
    pinnace("volume", "create", "used")
    pinnace("volume", "create", "free")
    res = pinnace("volume", "prune", check=False)  # no terminal, no --force
    assert res.rc == 125 and "--force" in res.err
    # containers arrive with issue 3: the rows its engine will write are inserted directly
    with sqlite3.connect(pinnace.root / "state.db") as db:
        db.execute("INSERT INTO containers (id, name, image_id) VALUES ('c1', 'web', 'sha256:x')")
        db.execute("INSERT INTO container_volumes VALUES ('c1', 'used')")
    assert pinnace("volume", "ls", "-q", "--filter", "dangling=true").out == "free\n"
    assert pinnace("volume", "prune", "-f").out == "free\n"
    res = pinnace("volume", "rm", "used", check=False)
    assert res.rc == 125 and "web" in res.err
    pinnace("volume", "rm", "-f", "used")
    assert pinnace("volume", "ls", "-q").out == ""


def test_a_store_of_the_previous_schema_gets_volumes(pinnace):
    pinnace("volume", "create", "before")  # creates the store
    with sqlite3.connect(pinnace.root / "state.db") as db:  # as pinnace 0.1.0 left it: schema 1, no volumes
        db.execute("DELETE FROM volumes")
        db.execute("DROP TABLE volumes")
        db.execute("DROP TABLE container_volumes")
        db.execute("PRAGMA user_version=1")
    assert pinnace("volume", "create", "after-upgrade").out == "after-upgrade\n"
