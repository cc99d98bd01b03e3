""".dockerignore rules, and the glob of COPY/ADD sources, with Docker's semantics.

A line is a pattern unless it starts with `#` in column 1 (Docker's rule: " # x" is a pattern); surrounding
whitespace is trimmed and blank lines are skipped. A leading `!` makes an exception. The pattern is cleaned
as Go's filepath.Clean cleans it and a leading `/` dropped, so `/foo`, `./foo` and `foo/` all mean `foo`.

Matching is Go's filepath.Match on the whole "/"-separated path relative to the context root: `*` and `?` never
cross `/`, `[...]` is a class (negated by `^`; `!` is a member), `\\` escapes the next character. Plus
Docker's `**`: `**/` (or `**` alone as a component) is any number of whole directories, none included; a
trailing `**` is anything. Two of moby's quirks are kept because users depend on them: a pattern that starts
with `**` and goes on with a name (`**.go`) matches any path ending so, and a `**` glued to text in the
middle (`a**b`) means `a(any dirs/)b`.

A pattern matches a path when it matches the path or any of its parent directories (so `node_modules`
excludes everything below it), and the last pattern that matches decides: a later `!` line re-includes.

A directory that is excluded must still be walked when an exception after the excluding line could
re-include something inside it (`ignored(dir, True)` is then False; `excluded(dir)` stays True): the walker
goes in, and the directory shows up only if something below it is included (BuildKit's behaviour; the old
builder only walked it when an exception pattern literally started with the directory's path).

The Dockerfile and the ignore file themselves are never dropped from the build: the builder reads them
whatever the rules say (open_context does), while COPY/ADD see them only when the rules let them through.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from pinnace.errors import InvalidArgument

_GLOB_CHARS = "*?["


class _BadPattern(ValueError):
    pass


def clean(path: str) -> str:
    """Go's filepath.Clean for "/"-separated paths: "" → ".", "a//b/./c/.." → "a/b", "/.." → "/"."""
    rooted = path.startswith("/")
    parts: list[str] = []
    for comp in path.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(comp)
    out = "/".join(parts)
    return "/" + out if rooted else out or "."


def has_wildcards(pattern: str) -> bool:
    """Whether a COPY source is a glob (Docker: an unescaped `*`, `?` or `[`)."""
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
            continue
        if pattern[i] in _GLOB_CHARS:
            return True
        i += 1
    return False


def _class_char(pat: str, i: int) -> tuple[str, int]:
    """Go's getEsc: one (possibly escaped) character of a class; `-` and `]` must be escaped."""
    if i >= len(pat) or pat[i] in "-]":
        raise _BadPattern("bad character class")
    if pat[i] == "\\":
        i += 1
        if i >= len(pat):
            raise _BadPattern("trailing backslash in a character class")
    if i + 1 >= len(pat):
        raise _BadPattern("unterminated character class")
    return pat[i], i + 1


def _class(pat: str, i: int) -> tuple[str, int]:
    """Regex of the class starting after `[` at i, and the index after its `]`."""
    negated = i < len(pat) and pat[i] == "^"
    if negated:
        i += 1
    ranges: list[str] = []
    count = 0
    while True:
        if i < len(pat) and pat[i] == "]" and count:
            i += 1
            break
        lo, i = _class_char(pat, i)
        hi = lo
        if pat[i] == "-":
            hi, i = _class_char(pat, i + 1)
        count += 1
        if lo <= hi:  # Go accepts a backwards range and it matches nothing; Python's re would refuse it
            ranges.append(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}")
    if not ranges:
        return ("." if negated else "(?!)"), i
    return "[" + ("^" if negated else "") + "".join(ranges) + "]", i


def _translate(pat: str, doublestar: bool) -> str:
    out: list[str] = []
    i, n = 0, len(pat)
    while i < n:
        c = pat[i]
        if c == "*" and doublestar and i + 1 < n and pat[i + 1] == "*":
            start, i = i, i + 2
            if i < n and pat[i] == "/":
                out.append("(?:.*/)?" if i + 1 < n else ".*")
                i += 1
            elif i >= n:
                out.append(".*")
            else:  # "**" glued to a name: moby's suffix match at the start, its "(.*/)?" elsewhere
                out.append(".*" if start == 0 else "(?:.*/)?")
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            if i + 1 >= n:
                raise _BadPattern("trailing backslash")
            i += 1
            out.append(re.escape(pat[i]))
        elif c == "[":
            part, i = _class(pat, i + 1)
            out.append(part)
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def glob_regex(pattern: str) -> re.Pattern:
    """Go's filepath.Match as a compiled regex (use `.fullmatch`); InvalidArgument for a bad pattern."""
    try:
        return re.compile(_translate(pattern, doublestar=False), re.DOTALL)
    except _BadPattern as e:
        raise InvalidArgument(f"syntax error in pattern {pattern!r}: {e}") from None


_DIRS = object()  # a component that is exactly "**": any number of whole components
_ANY = object()  # a component we cannot reason about alone ("a**b"): assume it may match anything deeper


@dataclass(frozen=True)
class Pattern:
    text: str  # cleaned, without the "!"
    exception: bool
    regex: re.Pattern
    parts: tuple = ()  # per component: a regex, _DIRS or _ANY (used to decide whether to walk a directory)

    def may_match_below(self, dirs: list[str]) -> bool:
        """Whether this pattern can match some path strictly below the directory `dirs` (components)."""
        memo: dict[tuple[int, int], bool] = {}

        def fits(i: int, j: int) -> bool:
            key = (i, j)
            if key not in memo:
                if j == len(dirs):
                    memo[key] = i < len(self.parts)
                elif i == len(self.parts):
                    memo[key] = False
                elif self.parts[i] is _ANY:
                    memo[key] = True
                elif self.parts[i] is _DIRS:
                    memo[key] = fits(i + 1, j) or fits(i, j + 1)
                else:
                    memo[key] = bool(self.parts[i].fullmatch(dirs[j])) and fits(i + 1, j + 1)
            return memo[key]

        return fits(0, 0)


def _pattern(text: str, exception: bool) -> Pattern:
    regex = re.compile(_translate(text, doublestar=True), re.DOTALL)
    parts: list = []
    for comp in text.split("/"):
        if comp == "**":
            parts.append(_DIRS)
        elif "**" in comp:
            parts.append(_ANY)
        else:
            try:
                parts.append(re.compile(_translate(comp, doublestar=False), re.DOTALL))
            except _BadPattern:  # a class spanning a "/": cannot be judged per component
                parts.append(_ANY)
    return Pattern(text, exception, regex, tuple(parts))


@dataclass(frozen=True)
class IgnoreRules:
    """The patterns of one ignore file, in order. Paths are relative to the context root, "/"-separated,
    without a leading "./" ("" is the root itself, never ignored)."""

    patterns: tuple[Pattern, ...] = ()
    # per directory: indices of the patterns matching it or one of its parents (a cache; not part of equality)
    _hits: dict[str, frozenset[int]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, text: str, source: str = ".dockerignore") -> IgnoreRules:
        """Rules from an ignore file's text; InvalidArgument naming `source` and the line for a bad one."""
        out: list[Pattern] = []
        for lineno, line in enumerate(text.removeprefix("\ufeff").splitlines(), 1):
            if line.startswith("#"):
                continue
            line = line.strip()
            if not line:
                continue
            exception = line.startswith("!")
            if exception:
                line = line[1:].strip()
                if not line:
                    raise InvalidArgument(f'{source}:{lineno}: illegal exclusion pattern: "!"')
            line = clean(line)
            if len(line) > 1 and line.startswith("/"):
                line = line[1:]
            try:
                out.append(_pattern(line, exception))
            except _BadPattern as e:
                raise InvalidArgument(f"{source}:{lineno}: syntax error in pattern {line!r}: {e}") from None
        return cls(tuple(out))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    @property
    def has_exceptions(self) -> bool:
        return any(p.exception for p in self.patterns)

    def _matching(self, path: str) -> frozenset[int]:
        """Indices of the patterns that match `path` or one of its parent directories."""
        parent, _, _ = path.rpartition("/")
        inherited = self._dir_hits(parent) if parent else frozenset()
        own = {i for i, p in enumerate(self.patterns) if i not in inherited and p.regex.fullmatch(path)}
        return inherited | own if own else inherited

    def _dir_hits(self, path: str) -> frozenset[int]:
        hits = self._hits.get(path)
        if hits is None:
            if len(self._hits) > 65536:  # a huge context: keep memory bounded, recomputing is cheap
                self._hits.clear()
            hits = self._hits[path] = self._matching(path)
        return hits

    def _decider(self, path: str) -> int:
        """Index of the last pattern matching `path` (or a parent), -1 when none does."""
        hits = self._matching(path) if path else frozenset()
        return max(hits) if hits else -1

    def excluded(self, path: str) -> bool:
        """Docker's verdict for `path` alone: the last matching pattern is not an exception."""
        last = self._decider(path)
        return last >= 0 and not self.patterns[last].exception

    def ignored(self, path: str, is_dir: bool) -> bool:
        """Whether the walker drops `path`: an excluded file; an excluded directory that no later exception
        could re-include anything below (otherwise it is walked, see the module doc)."""
        if not self.patterns or not path:
            return False
        last = self._decider(path)
        if last < 0 or self.patterns[last].exception:
            return False
        if not is_dir:
            return True
        dirs = path.split("/")
        return not any(p.exception and p.may_match_below(dirs) for p in self.patterns[last + 1:])
