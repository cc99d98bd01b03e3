"""Healthcheck configuration: the image's Healthcheck merged with --health-* (Docker's rules), and its storage."""
from __future__ import annotations

import json

import pytest

from pinnace.errors import InvalidArgument
from pinnace.runtime.health import HealthConfig, from_json, health_config, parse_duration, read_health, to_json

NS = 1_000_000_000
NONE = dict(cmd=None, interval=None, timeout=None, retries=None, start_period=None, no_healthcheck=False)


def cfg(image=None, **flags):
    return health_config(image, **{**NONE, **flags})


@pytest.mark.parametrize("text,seconds", [
    ("30s", 30), ("1m30s", 90), ("500ms", 0.5), ("1.5h", 5400), ("1h2m3.5s", 3723.5), ("0", 0), ("250us", 250e-6),
    ("2µs", 2e-6), ("100ns", 1e-7), (".5s", 0.5), ("+3s", 3), ("-1s", -1),
])
def test_go_durations(text, seconds):
    assert parse_duration(text, "--health-interval") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["30", "", "s", "1x", "1.2.3s", "1s2", "abc", ".s", "1 s", "3S"])
def test_bad_durations(text):
    with pytest.raises(InvalidArgument, match=r"invalid --health-timeout '.*': expected a duration"):
        parse_duration(text, "--health-timeout")


def test_defaults_are_dockers():
    c = cfg(cmd="curl -f http://localhost/")
    assert c == HealthConfig(test=("CMD-SHELL", "curl -f http://localhost/"), interval=30.0, timeout=30.0,
                             retries=3, start_period=0.0)
    assert c.args() == ["/bin/sh", "-c", "curl -f http://localhost/"]


def test_image_healthcheck_and_cli_overrides():
    image = {"Test": ["CMD", "/healthy", "--quick"], "Interval": 10 * NS, "Timeout": 2 * NS,
             "StartPeriod": 5 * NS, "Retries": 4}
    c = cfg(image)
    assert c == HealthConfig(("CMD", "/healthy", "--quick"), 10.0, 2.0, 4, 5.0)
    assert c.args() == ["/healthy", "--quick"]
    c = cfg(image, interval="1m30s", retries=1)       # field by field: the rest stays the image's
    assert c == HealthConfig(("CMD", "/healthy", "--quick"), 90.0, 2.0, 1, 5.0)
    c = cfg(image, cmd="true", timeout="500ms", start_period="0")
    assert (c.test, c.timeout, c.start_period) == (("CMD-SHELL", "true"), 0.5, 0.0)
    # zero values in the image mean "the default"
    assert cfg({"Test": ["CMD-SHELL", "x"], "Interval": 0, "Retries": 0}).interval == 30.0


def test_disabled_or_absent():
    assert cfg(None) is None
    assert cfg({}) is None
    assert cfg({"Test": []}) is None
    assert cfg({"Test": ["NONE"]}) is None
    assert cfg({"Test": ["NONE"]}, cmd="true").test == ("CMD-SHELL", "true")   # the flag wins
    assert cfg({"Test": ["CMD", "x"]}, cmd="none") is None                      # as Podman
    assert cfg({"Test": ["CMD", "x"]}, no_healthcheck=True) is None
    assert cfg(None, interval="5s") is None                                    # nothing to run (Docker)
    assert cfg({"Test": ["CMD", "x"]}, cmd="").test == ("CMD", "x")            # "" sets nothing (Docker)


def test_health_cmd_as_json_array():
    assert cfg(cmd='["CMD", "curl", "-f", "x"]').test == ("CMD", "curl", "-f", "x")
    assert cfg(cmd='["curl", "-f"]').test == ("CMD", "curl", "-f")
    assert cfg(cmd='["CMD-SHELL", "exit 0"]').test == ("CMD-SHELL", "exit 0")
    assert cfg(cmd='["NONE"]') is None
    # not JSON: a shell command that happens to start with "["
    assert cfg(cmd="[ -f /ready ]").test == ("CMD-SHELL", "[ -f /ready ]")


@pytest.mark.parametrize("flags,message", [
    (dict(no_healthcheck=True, cmd="true"), "--no-healthcheck conflicts with --health-cmd"),
    (dict(no_healthcheck=True, retries=2, interval="1s"), "conflicts with --health-interval, --health-retries"),
    (dict(cmd="true", retries=-1), "--health-retries cannot be negative"),
    (dict(cmd="true", interval="-5s"), "--health-interval cannot be negative"),
    (dict(cmd="true", timeout="500us"), "--health-timeout must be at least 1ms"),
    (dict(cmd="true", start_period="1h-"), "invalid --health-start-period '1h-'"),
    (dict(cmd="true", interval="30"), "invalid --health-interval '30': expected a duration"),
    (dict(cmd="[]"), "the command is empty"),
    (dict(cmd='["CMD"]'), "CMD needs a command"),
    (dict(cmd='["CMD", 1]'), "expected a list of strings"),
])
def test_bad_flags(flags, message):
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[")):
        cfg(**flags)


@pytest.mark.parametrize("image,message", [
    ({"Test": ["RUN", "x"]}, "unknown type 'RUN'"),
    ({"Test": "CMD true"}, "expected a list of strings"),
    ({"Test": ["CMD-SHELL"]}, "CMD-SHELL needs a command"),
    ({"Test": ["CMD", "x"], "Interval": "30s"}, "invalid healthcheck Interval '30s' in the image"),
    ({"Test": ["CMD", "x"], "Retries": "3"}, "invalid healthcheck Retries '3'"),
    ({"Test": ["CMD", "x"], "Timeout": -1}, "Timeout cannot be negative"),
    (["CMD", "x"], "expected an object"),
])
def test_bad_image_healthcheck(image, message):
    with pytest.raises(InvalidArgument, match=message):
        cfg(image)


def test_json_round_trip():
    c = HealthConfig(("CMD-SHELL", "curl -f x || exit 1"), 1.5, 0.25, 7, 90.0)
    stored = to_json(c)
    assert stored == {"Test": ["CMD-SHELL", "curl -f x || exit 1"], "Interval": 1_500_000_000,
                      "Timeout": 250_000_000, "StartPeriod": 90 * NS, "Retries": 7}
    assert from_json(stored) == c
    assert from_json(json.dumps(stored)) == c        # as kept in an OCI annotation (a string)
    for bad in ("{", "[]", json.dumps({"Test": ["NONE"]})):
        with pytest.raises(InvalidArgument):
            from_json(bad)


def test_read_health(tmp_path):
    path = tmp_path / "health.json"
    assert read_health(str(path)) is None
    path.write_text("{half")
    assert read_health(str(path)) is None
    path.write_text(json.dumps({"Status": "healthy", "FailingStreak": 0, "Log": []}))
    assert read_health(str(path))["Status"] == "healthy"
