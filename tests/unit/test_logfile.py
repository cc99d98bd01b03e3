"""The k8s-file log format: what the supervisor writes and `logs` reads back."""
from __future__ import annotations

from pinnace.runtime.logfile import MAX_RECORD, LogWriter, parse_rfc3339, read_log, rfc3339_nano

T0 = 1_700_000_000_123_456_789


def test_time_round_trip():
    assert rfc3339_nano(T0) == "2023-11-14T22:13:20.123456789Z"
    assert parse_rfc3339(rfc3339_nano(T0)) == T0
    assert parse_rfc3339("2023-11-14T23:13:20+01:00") == 1_700_000_000 * 10**9
    assert parse_rfc3339("2023-11-14T22:13:20.5Z") == 1_700_000_000_500_000_000


def test_write_and_read_back(tmp_path):
    log = tmp_path / "ctr.log"
    w = LogWriter(str(log))
    w.write("stdout", b"one\ntw", T0)
    w.write("stderr", b"oops\n", T0 + 1)
    w.write("stdout", b"o\nthree\n", T0 + 2)
    w.close()
    assert log.read_bytes().splitlines()[1] == b"2023-11-14T22:13:20.123456789Z stdout P tw"
    lines = read_log(str(log))
    assert [(l.stream, l.text) for l in lines] == [("stdout", b"one\n"), ("stdout", b"two\n"),
                                                  ("stderr", b"oops\n"), ("stdout", b"three\n")]
    assert [l.text for l in read_log(str(log), tail=2)] == [b"oops\n", b"three\n"]
    assert read_log(str(log), tail=0) == []
    assert [l.text for l in read_log(str(log), since_ns=T0 + 1)] == [b"oops\n", b"three\n"]
    assert [l.text for l in read_log(str(log), until_ns=T0)] == [b"one\n", b"two\n"]
    assert read_log(str(tmp_path / "none.log")) == []


def test_long_lines_split_and_torn_records_skipped(tmp_path):
    log = tmp_path / "ctr.log"
    w = LogWriter(str(log))
    w.write("stdout", b"x" * (MAX_RECORD * 2 + 5) + b"\n", T0)
    w.close()
    with open(log, "ab") as f:
        f.write(b"2023-11-14T22:13:20Z stdout F half-writ")  # no newline yet: still a valid record
        f.write(b"\ngarbage line\n")
    lines = read_log(str(log))
    assert lines[0].text == b"x" * (MAX_RECORD * 2 + 5) + b"\n"
    assert [l.text for l in lines[1:]] == [b"half-writ\n"]


def test_max_size_starts_over(tmp_path):
    log = tmp_path / "ctr.log"
    w = LogWriter(str(log), max_size=200)
    for i in range(20):
        w.write("stdout", f"line {i}\n".encode(), T0 + i)
    w.close()
    assert log.stat().st_size <= 200
    assert read_log(str(log))[-1].text == b"line 19\n"


def test_since_from_the_cli_is_exact_to_the_nanosecond(tmp_path):
    # a stamp copied from `logs -t` must include its own line: a float round trip can land a few
    # hundred ns after it and silently drop every line written in the same read
    from pinnace.cli.container_view import parse_log_time
    stamp = "2026-11-29T02:06:34.940287219Z"
    assert parse_log_time(stamp) == parse_rfc3339(stamp) == 1795917994940287219
    assert parse_log_time("1795917994.940287219") == 1795917994940287219
    assert parse_log_time("2026-11-29T03:06:34.5+01:00") == 1795917994500000000
    path = str(tmp_path / "log")
    w = LogWriter(path)
    w.write("stdout", b"a\nb\n", now_ns=1795917994940287219)
    w.write("stdout", b"c\n", now_ns=1795917995940287219)
    assert [line.text for line in read_log(path, since_ns=parse_log_time(stamp))] == [b"a\n", b"b\n", b"c\n"]
