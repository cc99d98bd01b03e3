"""--tls-verify and --creds as pull, push and login take them (typer-free: the fast `push` uses them)."""
from __future__ import annotations


def tls(value: str | None) -> bool | None:
    if value is None:
        return None
    v = value.lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    from pinnace.errors import InvalidArgument
    raise InvalidArgument(f"invalid --tls-verify value {value!r} (true or false)")


def creds(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep:
        import getpass
        password = getpass.getpass(f"Password for {user}: ")
    return user, password
