"""Docker's variable substitution and word splitting, with BuildKit's lexer semantics.

`expand` is BuildKit's ProcessWord (one word: quotes and escapes removed, variables substituted, no
splitting), `expand_words` its ProcessWords (split on unquoted whitespace, including whitespace that a
variable's value brings in). Outside quotes the escape character escapes anything; inside double quotes only
`"`, `$` and the escape character; inside single quotes nothing, and nothing is expanded there.

Substitutions: `$V`, `${V}`, and the modifiers the Dockerfile reference documents: `${V:-w}` `${V:+w}`
(unset or empty counts as unset) and, since Dockerfile 1.7, `${V#p}` `${V##p}` `${V%p}` `${V%%p}` (shortest
and longest prefix/suffix removal) and `${V/p/r}` `${V//p/r}` (first/all replacements). BuildKit's lexer
also takes, and so do we: `${V-w}` `${V+w}` (only unset counts), `${V?msg}` `${V:?msg}` (error when unset /
unset-or-empty). Patterns are BuildKit's: `*` and `?` wildcards, `\\*` `\\?` `\\\\` escapes, `[` is literal.
An unset variable expands to the empty string.

The builder expands variables only in EXPANDED_INSTRUCTIONS (and in the flags of EXPANDED_FLAGS); in RUN,
CMD and ENTRYPOINT the `$` reaches the shell untouched (SHELL_EXPANDED). ONBUILD is not expanded when
declared: its trigger is expanded when it runs in the child build, like any other instruction.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from pinnace.errors import InvalidArgument

# ARG is not in the reference's list, but BuildKit expands both names and default values (ARG B=${A}x).
EXPANDED_INSTRUCTIONS = frozenset({"ADD", "ARG", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL",
                                   "USER", "VOLUME", "WORKDIR"})
EXPANDED_FLAGS: Mapping[str, frozenset[str]] = {
    "ADD": frozenset({"chown", "chmod", "checksum"}),
    "COPY": frozenset({"from", "chown", "chmod"}),
    "FROM": frozenset({"platform"}),  # with the global ARGs only
    "RUN": frozenset({"mount"}),  # each value of each key=value field (see dockerfile.parse_mount)
}
SHELL_EXPANDED = frozenset({"RUN", "CMD", "ENTRYPOINT"})
_SPECIAL_PARAMS = "@*#?-$!0"
_HEREDOC = re.compile(r"^(\d*)<<(-?)([^<]*)$")


class DockerfileError(InvalidArgument):
    """A Dockerfile that cannot be parsed or expanded; the message starts with `file:line:` when known."""

    def __init__(self, message: str, filename: str | None = None, line: int | None = None):
        self.message, self.filename, self.line = message, filename, line
        if filename is None:
            super().__init__(message)
        elif line is None:
            super().__init__(f"{filename}: {message}")
        else:
            super().__init__(f"{filename}:{line}: {message}")

    def at(self, filename: str, line: int | None) -> DockerfileError:
        """The same error located in a file (the executor locates expansion errors at the step's line)."""
        return DockerfileError(self.message, filename, line)


def go_quote(text: str) -> str:
    """Go's %q, which BuildKit's messages use: they are quoted here the same way."""
    body = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return '"' + body.replace("\r", "\\r") + '"'


class _Words:
    """The word splitter fed character by character: quoted and escaped characters never split."""

    __slots__ = ("word", "words", "in_word")

    def __init__(self) -> None:
        self.word, self.words, self.in_word = "", [], False

    def add_char(self, ch: str) -> None:
        if not ch.isspace():
            self.add_raw(ch)
        elif self.in_word and self.word:
            self.words.append(self.word)
            self.word, self.in_word = "", False

    def add_raw(self, text: str) -> None:
        self.word += text
        self.in_word = True

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def result(self) -> list[str]:
        if self.word:
            self.words.append(self.word)
            self.word, self.in_word = "", False
        return self.words


class _Lexer:
    """One pass over one word. raw_quotes/raw_escapes keep quotes/escape characters in the output;
    skip_unset leaves references to unset variables as written; skip_quotes treats quotes as ordinary
    characters (heredoc bodies)."""

    def __init__(self, src: str, env: Mapping[str, str], escape: str, *, raw_quotes: bool = False,
                 raw_escapes: bool = False, skip_unset: bool = False, skip_quotes: bool = False):
        if escape not in ("\\", "`"):
            raise DockerfileError(f"invalid escape token '{escape}' does not match ` or \\")
        self.src, self.pos, self.env, self.escape = src, 0, env, escape
        self.raw_quotes, self.raw_escapes = raw_quotes, raw_escapes
        self.skip_unset, self.skip_quotes = skip_unset, skip_quotes

    def peek(self) -> str:  # "" at the end
        return self.src[self.pos] if self.pos < len(self.src) else ""

    def next(self) -> str:
        ch = self.peek()
        self.pos += bool(ch)
        return ch

    def run(self) -> tuple[str, list[str]]:
        try:
            return self.stop_on("", self.raw_escapes)
        except DockerfileError as exc:
            raise DockerfileError(f"failed to process {go_quote(self.src)}: {exc.message}") from None

    def stop_on(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        result: list[str] = []
        words = _Words()
        while ch := self.peek():
            if ch == stop:
                self.next()
                return "".join(result), words.result()
            if ch == "$" or (ch in "'\"" and not self.skip_quotes):
                text = self.dollar() if ch == "$" else self.single_quoted() if ch == "'" else self.double_quoted()
                result.append(text)
                if ch == "$":
                    words.add_string(text)  # a variable's value is split into words ...
                else:
                    words.add_raw(text)  # ... a quoted string never is
                continue
            self.next()
            if ch == self.escape:
                if raw_escapes:
                    words.add_raw(ch)
                    result.append(ch)
                ch = self.next()
                if not ch:
                    break  # an escape at the very end is dropped
                words.add_raw(ch)
            else:
                words.add_char(ch)
            result.append(ch)
        if stop:
            raise DockerfileError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.result()

    def single_quoted(self) -> str:
        quote = self.next()
        out = [quote] if self.raw_quotes else []
        while True:
            ch = self.next()
            if not ch:
                raise DockerfileError("unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def double_quoted(self) -> str:
        quote = self.next()
        out = [quote] if self.raw_quotes else []
        while True:
            ch = self.peek()
            if not ch:
                raise DockerfileError("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.next()
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                continue
            self.next()
            if ch == self.escape:
                if self.raw_escapes:
                    out.append(ch)
                following = self.peek()
                if not following:
                    continue
                if following in ('"', "$", self.escape):  # other escapes stay as written
                    ch = self.next()
            out.append(ch)

    def name(self) -> str:
        start, ch = self.pos, self.peek()
        if ch.isdecimal():  # $1, $12: positional, always unset here
            while self.peek().isdecimal():
                self.pos += 1
        elif ch and ch in _SPECIAL_PARAMS:
            self.pos += 1
        else:
            while (c := self.peek()) and (c.isalpha() or c.isdecimal() or c == "_"):
                self.pos += 1
        return self.src[start:self.pos]

    def lookup(self, name: str) -> str | None:
        return self.env.get(name)

    def dollar(self) -> str:
        self.next()
        if self.peek() != "{":
            name = self.name()
            if not name:
                return "$"
            value = self.lookup(name)
            if value is None and self.skip_unset:
                return "$" + name
            return value or ""
        self.next()
        ch = self.peek()
        if not ch:
            raise DockerfileError("syntax error: missing '}'")
        if ch in "{}:":
            raise DockerfileError("syntax error: bad substitution")
        name = self.name()
        ch = self.next()
        if not ch:
            raise DockerfileError("syntax error: missing '}'")
        value = self.lookup(name)
        if ch == "}":
            if value is None and self.skip_unset:
                return "${" + name + "}"
            return value or ""
        if ch == "/":
            return self.replace(name, value)
        mods, null_is_unset = ch, ch == ":"
        if ch == ":":
            ch = self.next()
            mods += ch
        elif ch not in "+-?#%":
            if self.skip_unset:
                return "${" + name + "}"
            raise DockerfileError(f"unsupported modifier ({mods}) in substitution")
        pattern_op = ch in ("#", "%")
        if null_is_unset and pattern_op:
            raise DockerfileError(f"unsupported modifier ({mods}) in substitution")
        word = self.until_brace(pattern_op)
        if value is None and self.skip_unset:
            return "${" + name + mods + word + "}"
        unset = value is None or (null_is_unset and value == "")
        if ch == "-":
            return word if unset else value or ""
        if ch == "+":
            return "" if unset else word
        if ch == "?":
            if value is None:
                raise DockerfileError(f"{name}: {word or 'is not allowed to be unset'}")
            if unset:
                raise DockerfileError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if ch in ("#", "%"):
            greedy = word.startswith(ch)
            return _trim(value or "", word[1:] if greedy else word, ch == "#", greedy)
        raise DockerfileError(f"unsupported modifier ({mods}) in substitution")

    def until_brace(self, raw_escapes: bool) -> str:
        try:
            return self.stop_on("}", raw_escapes)[0]
        except DockerfileError:
            if not self.peek():
                raise DockerfileError("syntax error: missing '}'") from None
            raise

    def replace(self, name: str, value: str | None) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.next()
        try:
            pattern = self.stop_on("/", True)[0]
        except DockerfileError:
            if not self.peek():
                raise DockerfileError("syntax error: missing '/' in ${}") from None
            raise
        replacement = self.until_brace(True)
        if value is None and self.skip_unset:
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        regex = re.compile(_pattern_regex(pattern))
        return regex.sub(lambda _m: replacement, value or "", count=0 if replace_all else 1)


def _pattern_regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            following = pattern[i] if i < len(pattern) else ""
            if following in ("}", "/"):
                continue  # the escape protected the ${} syntax; it is not part of the pattern
            if following not in ("*", "?", "\\"):
                raise DockerfileError(f"invalid escape '\\{following}'")
            out.append(re.escape(following))
            i += 1
        else:
            out.append(re.escape(ch))
    return "".join(out)


def _trim(value: str, pattern: str, prefix: bool, greedy: bool) -> str:
    regex = re.compile(_pattern_regex(pattern))
    cuts = range(len(value) + 1)
    if prefix:  # shortest prefix first unless greedy
        for cut in (reversed(cuts) if greedy else cuts):
            if regex.fullmatch(value, 0, cut):
                return value[cut:]
    else:
        for cut in (cuts if greedy else reversed(cuts)):
            if regex.fullmatch(value, cut):
                return value[:cut]
    return value


def expand(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """One word with quotes and escapes processed and variables substituted (never split)."""
    return _Lexer(word, env, escape).run()[0]


def expand_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Words of text after substitution, split on unquoted whitespace (EXPOSE's ports)."""
    return _Lexer(text, env, escape).run()[1]


def expand_heredoc(content: str, env: Mapping[str, str]) -> str:
    """A COPY/ADD heredoc body whose delimiter is unquoted: variables are substituted, quotes are
    ordinary characters, and (as BuildKit does) a backslash escapes the next character."""
    return _Lexer(content, env, "\\", skip_quotes=True).run()[0]


def split_words(text: str, escape: str = "\\") -> list[str]:
    """Split ENV/LABEL/ARG arguments on unquoted whitespace, keeping quotes and escapes in the words
    (they are removed when each key and value is expanded)."""
    words: list[str] = []
    word, quote, i, n = "", "", 0, len(text)
    while i < n:
        ch = text[i]
        i += 1
        if quote:
            if ch == quote:
                quote = ""
            elif ch == escape and quote != "'":  # nothing escapes inside single quotes
                if i == n:
                    break  # an escape at the end is dropped
                ch += text[i]
                i += 1
            word += ch
        elif ch.isspace():
            if word:
                words.append(word)
            word = ""
        elif ch == escape:
            if i < n:  # kept with the next character, even a quote
                word += ch + text[i]
                i += 1
        else:
            if ch in "'\"":
                quote = ch
            word += ch
    if word:  # an unterminated quote ends the word: expanding it reports the missing quote
        words.append(word)
    return words


def parse_key_values(text: str, instruction: str = "ENV", escape: str = "\\") -> list[tuple[str, str]]:
    """ENV/LABEL pairs, raw (expand key and value later): `K=v K2="a b"` or the legacy `K value with
    spaces` (one pair, the value is the rest of the line). The form is chosen by the first word."""
    words = split_words(text, escape)
    if not words:
        return []
    if "=" not in words[0]:
        parts = re.split(r"[\t\v\f\r ]+", text, maxsplit=1)
        if len(parts) < 2:
            raise DockerfileError(f"{instruction} must have two arguments")
        return [(parts[0], parts[1])]
    pairs = []
    for word in words:
        if "=" not in word:
            raise DockerfileError(f"Syntax error - can't find = in {go_quote(word)}. Must be of the form: name=value")
        key, _, value = word.partition("=")
        pairs.append((key, value))
    return pairs


def heredoc_word(word: str) -> tuple[str, bool, bool] | None:
    """(name, chomp, expand) when word is a heredoc opener (`<<EOF`, `<<-EOF`, `<<"EOF"`), else None.
    A delimiter with any quoted part means the body is not expanded."""
    m = _HEREDOC.match(word)
    if not m or not m.group(3):
        return None
    try:
        words = _Lexer(m.group(3), {}, "\\", skip_unset=True).run()[1]
        raw_words = _Lexer(m.group(3), {}, "\\", skip_unset=True, raw_quotes=True).run()[1]
    except DockerfileError:
        return None
    if len(words) != 1 or len(raw_words) != 1:
        return None

    def quotes(w: str) -> int:
        return w.count("'") + w.count('"')
    return words[0], m.group(2) == "-", quotes(words[0]) == quotes(raw_words[0])


def heredocs_in_line(line: str) -> list[tuple[str, bool, bool]]:
    """The heredoc openers of an instruction line, in order (their bodies follow the line in that order)."""
    try:
        words = _Lexer(line, {}, "\\", raw_quotes=True, raw_escapes=True).run()[1]
    except DockerfileError:
        return []  # BuildKit ignores a line it cannot split: no heredoc
    return [doc for doc in map(heredoc_word, words) if doc is not None]
