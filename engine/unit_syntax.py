"""systemd's unit-file syntax, both ways: quoting words of an Exec*= line, splitting a command line or an
Environment= value into words, and reading a unit file into (section, key, value, line) entries.

Used by engine/systemd_units.py (writing) and engine/quadlet.py (reading Quadlet files). Specifiers (%n)
and $VARIABLES are systemd's to expand: readers keep them as written, writers escape them unless told not to.
"""
from __future__ import annotations

from dataclasses import dataclass

from pinnace.errors import InvalidArgument

SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=@,+%$")


# -- systemd's command-line syntax --------------------------------------------------------------
def quote_word(word: str, *, percent: bool = True, dollar: bool = True) -> str:
    """One word of an ExecStart= line. `percent`/`dollar`: make % and $ literal (%% and $$); False
    keeps them for systemd to expand (specifiers and variables written by the user, as in Quadlet)."""
    if percent:
        word = word.replace("%", "%%")
    if dollar:
        word = word.replace("$", "$$")
    if word == ";":
        return "\\;"   # a lone ; separates commands
    if word and all(c in SAFE for c in word):
        return word
    for raw, esc in (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\t", "\\t"), ("\r", "\\r")):
        word = word.replace(raw, esc)
    return f'"{word}"'


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "s": " ", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


def split_words(text: str) -> list[str]:
    """Words of a systemd command line or Environment= value: whitespace separates, "…" and '…' group,
    C escapes are decoded. % and $ are left as they are (systemd expands them later)."""
    words: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return words
        word: list[str] = []
        while i < n and not text[i].isspace():
            c = text[i]
            if c in "\"'":
                i += 1
                while i < n and text[i] != c:
                    if text[i] == "\\" and i + 1 < n:
                        piece, i = _unescape(text, i)
                        word.append(piece)
                    else:
                        word.append(text[i])
                        i += 1
                if i >= n:
                    raise ValueError(f"unbalanced quoting in {text!r}")
                i += 1
            elif c == "\\" and i + 1 < n:
                piece, i = _unescape(text, i)
                word.append(piece)
            else:
                word.append(c)
                i += 1
        words.append("".join(word))


def _unescape(text: str, i: int) -> tuple[str, int]:
    """The escape at text[i] (a backslash): its character and the index after it."""
    c = text[i + 1]
    if c in _ESCAPES:
        return _ESCAPES[c], i + 2
    if c == "x" and i + 4 <= len(text):
        try:
            return chr(int(text[i + 2:i + 4], 16)), i + 4
        except ValueError:
            pass
    return c, i + 2


def format_command(argv: list[str], head: int = 1, tail: int | None = None, *, percent: bool = True,
                   dollar: bool = True, width: int = 100) -> str:
    """An Exec*= value. Longer than `width`: argv[:head] (the executable, global flags, the verb) on the
    first line, then one flag per continuation line (Podman's layout), argv[tail:] (an image and its
    command) together on the last."""
    words = [quote_word(w, percent=percent, dollar=dollar) for w in argv]
    if len(" ".join(words)) <= width:
        return " ".join(words)
    tail = len(words) if tail is None else tail
    out = " ".join(words[:head])
    for i in range(head, len(words)):
        brk = (i < tail and argv[i].startswith("-")) or i == tail
        out += (" \\\n\t" if brk else " ") + words[i]
    return out


# -- unit files ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    section: str
    key: str
    value: str
    line: int          # where the assignment starts (1-based)


def parse_unit(text: str, path: str) -> list[Entry]:
    """The assignments of a unit file in order. systemd's rules: [Section] headers, `Key=Value` (space
    around `=` ignored), # and ; comments, a trailing backslash continues the line. A malformed line is
    an InvalidArgument naming `path:line`."""
    entries: list[Entry] = []
    section = ""
    pending: tuple[int, str] | None = None   # (first line, text so far) of a continued line
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if pending is not None:
            if line.startswith(("#", ";")):
                continue
            start, joined = pending
            line, number = joined + " " + line, start
            pending = None
        elif not line or line.startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            pending = (number, line[:-1].rstrip())
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise InvalidArgument(f"{path}:{number}: invalid section header {line!r}")
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise InvalidArgument(f"{path}:{number}: expected Key=Value, found {line!r}")
        if not section:
            raise InvalidArgument(f"{path}:{number}: {key.strip()}= is outside of any [Section]")
        entries.append(Entry(section, key.strip(), value.strip(), number))
    if pending is not None:
        start, joined = pending
        raise InvalidArgument(f"{path}:{start}: the file ends inside a continued line")
    return entries
