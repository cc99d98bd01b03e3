"""Docker's variable substitution (BuildKit's shell-word lexer) and the ENV/LABEL/ARG word splitting."""
from __future__ import annotations

import pytest

from pinnace.builder.expand import (EXPANDED_FLAGS, EXPANDED_INSTRUCTIONS, SHELL_EXPANDED, DockerfileError, expand,
                                    expand_heredoc, expand_words, heredoc_word, heredocs_in_line, parse_key_values,
                                    split_words)
from pinnace.errors import InvalidArgument

ENV = {"A": "/usr/local/bin.tar.gz", "EMPTY": "", "PORTS": "80 443/udp", "NAME": "world", "X": "x"}

EXPANSIONS = [
    ("$NAME", "world"),
    ("${NAME}", "world"),
    ("${NAME}_x", "world_x"),
    ("$NAME_x", ""),  # the name runs on: NAME_x is unset
    ("hello-$NAME.txt", "hello-world.txt"),
    ("$UNSET", ""),
    ("${UNSET}", ""),
    ("\\$NAME", "$NAME"),
    ("\\${NAME}", "${NAME}"),
    ("'$NAME'", "$NAME"),  # nothing is expanded in single quotes
    ('"$NAME"', "world"),
    ('"${NAME} and \\$NAME"', "world and $NAME"),
    ('"a\\"b"', 'a"b'),
    ('"a\\x"', "a\\x"),  # inside double quotes only " $ and \ are escapable
    ("a\\x", "ax"),  # outside quotes anything is
    ("abc\\", "abc"),  # a trailing escape is dropped
    ("'it'\"'\"'s'", "it's"),
    ("a b  c", "a b  c"),  # one word: never split
    ("$", "$"),
    ("a$", "a$"),
    ("$1x", "x"),  # positional parameters are always unset
    ("${NAME:-default}", "world"),
    ("${UNSET:-default}", "default"),
    ("${EMPTY:-default}", "default"),
    ("${EMPTY-default}", ""),  # without the colon only unset counts
    ("${UNSET-default}", "default"),
    ("${NAME:+alt}", "alt"),
    ("${UNSET:+alt}", ""),
    ("${EMPTY:+alt}", ""),
    ("${EMPTY+alt}", "alt"),
    ("${UNSET:-$NAME}", "world"),
    ("${UNSET:-${ALSO:-deep}}", "deep"),
    ('${UNSET:-"x y"}', "x y"),
    ("${UNSET:-'$NAME'}", "$NAME"),
    ("${NAME?must be set}", "world"),
    ("${A#*/}", "usr/local/bin.tar.gz"),
    ("${A##*/}", "bin.tar.gz"),
    ("${A%.*}", "/usr/local/bin.tar"),
    ("${A%%.*}", "/usr/local/bin"),
    ("${A#nomatch}", "/usr/local/bin.tar.gz"),
    ("${A%?z}", "/usr/local/bin.tar."),
    ("${A/l/L}", "/usr/Local/bin.tar.gz"),
    ("${A//l/L}", "/usr/LocaL/bin.tar.gz"),
    ("${A//[/x}", "/usr/local/bin.tar.gz"),  # [ is a literal character in BuildKit patterns
    ("${UNSET#x}", ""),
]


@pytest.mark.parametrize("word,expected", EXPANSIONS)
def test_expand(word, expected):
    assert expand(word, ENV) == expected


@pytest.mark.parametrize("word,message", [
    ('"abc', 'failed to process "\\"abc": unexpected end of statement while looking for matching double-quote'),
    ("'abc", "failed to process \"'abc\": unexpected end of statement while looking for matching single-quote"),
    ("${A", "failed to process \"${A\": syntax error: missing '}'"),
    ("${A:-x", "failed to process \"${A:-x\": syntax error: missing '}'"),
    ("${}", 'failed to process "${}": syntax error: bad substitution'),
    ("${:-x}", 'failed to process "${:-x}": syntax error: bad substitution'),
    ("${A:x}", 'failed to process "${A:x}": unsupported modifier (:x) in substitution'),
    ("${A^}", 'failed to process "${A^}": unsupported modifier (^) in substitution'),
    ("${A:#x}", 'failed to process "${A:#x}": unsupported modifier (:#) in substitution'),
    ("${UNSET?}", 'failed to process "${UNSET?}": UNSET: is not allowed to be unset'),
    ("${EMPTY:?}", 'failed to process "${EMPTY:?}": EMPTY: is not allowed to be empty'),
    ("${UNSET:?set it}", 'failed to process "${UNSET:?set it}": UNSET: set it'),
    ("${A#\\x}", "failed to process \"${A#\\\\x}\": invalid escape '\\x'"),
])
def test_expand_errors(word, message):
    with pytest.raises(DockerfileError) as err:
        expand(word, ENV)
    assert str(err.value) == message
    assert isinstance(err.value, InvalidArgument)


def test_backtick_escape_leaves_backslashes_alone():
    assert expand("c:\\path\\$X", ENV, escape="`") == "c:\\path\\x"
    assert expand("a`$X `\"q`\"", ENV, escape="`") == 'a$X "q"'
    assert expand('"`$X"', ENV, escape="`") == "$X"
    with pytest.raises(DockerfileError, match="invalid escape token"):
        expand("x", ENV, escape="!")


@pytest.mark.parametrize("text,words", [
    ("80 443/udp", ["80", "443/udp"]),
    ("$PORTS", ["80", "443/udp"]),  # whitespace a variable brings in splits ...
    ('"$PORTS"', ["80 443/udp"]),  # ... unless quoted
    ("8080 $PORTS 9000", ["8080", "80", "443/udp", "9000"]),
    ("'a b' c\\ d", ["a b", "c d"]),
    ('""', []),
    ("", []),
    ("  x  ", ["x"]),
    ("a${EMPTY}b", ["ab"]),
])
def test_expand_words(text, words):
    assert expand_words(text, ENV) == words


def test_heredoc_body_expansion_keeps_quotes():
    body = "say \"$NAME\" '$X' \\$HOME ${UNSET:-none}\n"
    assert expand_heredoc(body, ENV) == "say \"world\" 'x' $HOME none\n"


@pytest.mark.parametrize("text,words", [
    ('A="a b" B=c\\ d', ['A="a b"', "B=c\\ d"]),  # quotes and escapes stay for the expansion
    ("'x  y' z", ["'x  y'", "z"]),
    ('A="q\\"uote" B', ['A="q\\"uote"', "B"]),
    ("a\\", ["a"]),
    ("  ", []),
])
def test_split_words(text, words):
    assert split_words(text) == words


@pytest.mark.parametrize("text,pairs,expanded", [
    ("A=1", [("A", "1")], [("A", "1")]),
    ('A=1 B="two words" C=x\\ y', [("A", "1"), ("B", '"two words"'), ("C", "x\\ y")],
     [("A", "1"), ("B", "two words"), ("C", "x y")]),
    ("KEY a legacy  value", [("KEY", "a legacy  value")], [("KEY", "a legacy  value")]),  # legacy: rest of line
    ('KEY "quoted" $NAME', [("KEY", '"quoted" $NAME')], [("KEY", "quoted world")]),
    ('"com.example.vendor"="ACME Inc"', [('"com.example.vendor"', '"ACME Inc"')],
     [("com.example.vendor", "ACME Inc")]),
    ("A= B=b=c", [("A", ""), ("B", "b=c")], [("A", ""), ("B", "b=c")]),
    ("", [], []),
])
def test_parse_key_values(text, pairs, expanded):
    assert parse_key_values(text) == pairs
    assert [(expand(k, ENV), expand(v, ENV)) for k, v in pairs] == expanded


@pytest.mark.parametrize("text,message", [
    ("KEY", "ENV must have two arguments"),
    ("A=1 B", 'Syntax error - can\'t find = in "B". Must be of the form: name=value'),
])
def test_parse_key_values_errors(text, message):
    with pytest.raises(DockerfileError) as err:
        parse_key_values(text, "ENV")
    assert str(err.value) == message


@pytest.mark.parametrize("word,parsed", [
    ("<<EOF", ("EOF", False, True)),
    ("<<-EOF", ("EOF", True, True)),
    ('<<"EOF"', ("EOF", False, False)),
    ("<<'EOF'", ("EOF", False, False)),
    ("<<E'O'F", ("EOF", False, False)),  # any quoted part: no expansion
    ("<<", None),
    ("x<<EOF", None),
    ("<<EOF<<", None),
])
def test_heredoc_word(word, parsed):
    assert heredoc_word(word) == parsed


def test_heredocs_in_line():
    assert heredocs_in_line('RUN <<A cat - <<-"B" > /x') == [("A", False, True), ("B", True, False)]
    assert heredocs_in_line('RUN echo "<<NOT"') == []  # a quoted opener is an argument
    assert heredocs_in_line('RUN echo "unterminated <<EOF') == []


def test_where_docker_expands():
    assert EXPANDED_INSTRUCTIONS == {"ADD", "ARG", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER",
                                     "VOLUME", "WORKDIR"}
    assert not SHELL_EXPANDED & EXPANDED_INSTRUCTIONS and "ONBUILD" not in EXPANDED_INSTRUCTIONS
    assert EXPANDED_FLAGS["COPY"] == {"from", "chown", "chmod"} and EXPANDED_FLAGS["RUN"] == {"mount"}


def test_error_location():
    err = DockerfileError("bad").at("Containerfile", 9)
    assert str(err) == "Containerfile:9: bad" and (err.filename, err.line, err.message) == ("Containerfile", 9, "bad")
    assert str(DockerfileError("bad", "Dockerfile")) == "Dockerfile: bad"
