"""The Dockerfile parser: directives, comments and continuations, heredocs, JSON and shell forms, flags, stages,
and every parse error with its `file:line:` message."""
from __future__ import annotations

import pytest

from pinnace.builder.dockerfile import (Add, Arg, Cmd, Copy, DockerfileError, Entrypoint, Env, Expose, Healthcheck,
                                        Label, Maintainer, Onbuild, Run, Shell, StopSignal, User, Volume, Workdir,
                                        parse, parse_mount, parse_trigger)
from pinnace.builder.expand import expand
from pinnace.errors import InvalidArgument

SH = ["/bin/sh", "-c"]
NOT_STRINGS = ":2: when using JSON array syntax, arrays must be comprised of strings only"
BAD_NAME = "name can't start with a number or contain symbols"


def only(text: str):
    """The single instruction of a one-stage Dockerfile whose body is text."""
    (inst,) = parse("FROM busybox\n" + text).stages[0].instructions
    return inst


# ------------------------------------------------------------------------------------------------ errors

ERRORS = [
    ("FROM a\nRUN x\n\n# c\n\n\nFORM b\n", "Dockerfile:7: unknown instruction: FORM"),
    ("FROM a\ncopyy a b\n", "Dockerfile:2: unknown instruction: COPYY"),
    ("", "Dockerfile: file with no instructions"),
    ("# only a comment\n\n   \n", "Dockerfile: file with no instructions"),
    ("ARG A=1\nARG B\n", "Dockerfile: dockerfile contains no stages to build: FROM missing"),
    ("ARG A\nRUN x\nFROM b\n", "Dockerfile:2: no build stage in current context: RUN before the first FROM"),
    ("# c\nENV A=b\n", "Dockerfile:2: no build stage in current context: ENV before the first FROM"),
    ("FROM a\nCMD [\"a\", 1]\n", "Dockerfile" + NOT_STRINGS),
    ("FROM a\nRUN [\"a\", null]\n", "Dockerfile" + NOT_STRINGS),
    ("FROM a\nENTRYPOINT [[\"a\"]]\n", "Dockerfile" + NOT_STRINGS),
    ("FROM a\nHEALTHCHECK CMD [true]\n", "Dockerfile" + NOT_STRINGS),
    ("FROM a\nVOLUME [\"/a\", {}]\n", "Dockerfile" + NOT_STRINGS),
    ("FROM a\nSHELL /bin/bash -c\n", "Dockerfile:2: SHELL requires the arguments to be in JSON form"),
    ("FROM a\nSHELL []\n", "Dockerfile:2: SHELL requires at least one argument"),
    ("FROM a\nRUN\n", "Dockerfile:2: RUN requires at least one argument"),
    ("FROM a\nEXPOSE\n", "Dockerfile:2: EXPOSE requires at least one argument"),
    ("FROM a\nENV\n", "Dockerfile:2: ENV requires at least one argument"),
    ("FROM a\nLABEL\n", "Dockerfile:2: LABEL requires at least one argument"),
    ("FROM a\nARG\n", "Dockerfile:2: ARG requires at least one argument"),
    ("FROM a\nVOLUME\n", "Dockerfile:2: VOLUME requires at least one argument"),
    ("FROM a\nVOLUME [\"/a\", \" \"]\n", "Dockerfile:2: VOLUME specified can not be an empty string"),
    ("FROM a\nUSER\n", "Dockerfile:2: USER requires exactly one argument"),
    ("FROM a\nWORKDIR   \n", "Dockerfile:2: WORKDIR requires exactly one argument"),
    ("FROM a\nSTOPSIGNAL\n", "Dockerfile:2: STOPSIGNAL requires exactly one argument"),
    ("FROM a\nMAINTAINER\n", "Dockerfile:2: MAINTAINER requires exactly one argument"),
    ("FROM a\nENV KEY\n", "Dockerfile:2: ENV must have two arguments"),
    ("FROM a\nLABEL a=1 b\n", "Dockerfile:2: Syntax error - can't find = in \"b\". Must be of the form: name=value"),
    ("FROM a\nENV =x\n", "Dockerfile:2: ENV names can not be blank"),
    ("FROM a\nARG =x\n", "Dockerfile:2: ARG names can not be blank"),
    ("FROM a\nRUN <<EOF\necho hi\nEOFX\n", "Dockerfile:2: unterminated heredoc EOF"),
    ("FROM a\nRUN <<EOF\necho hi\nEOF \n", "Dockerfile:2: unterminated heredoc EOF"),  # the delimiter line is exact
    ("FROM a\nRUN <<A <<B\na\nA\nb\n", "Dockerfile:2: unterminated heredoc B"),
    ("FROM a AS 1st\n", f"Dockerfile:1: invalid name for build stage: \"1st\", {BAD_NAME}"),
    ("FROM a AS b/c\n", f"Dockerfile:1: invalid name for build stage: \"b/c\", {BAD_NAME}"),
    ("FROM a AS\n", "Dockerfile:1: FROM requires either one or three arguments"),
    ("FROM a b c d\n", "Dockerfile:1: FROM requires either one or three arguments"),
    ("FROM\n", "Dockerfile:1: FROM requires either one or three arguments"),
    ("FROM a AS x\nRUN y\nFROM b AS X\n", "Dockerfile:3: duplicate stage name \"x\""),
    ("FROM a\nRUN --chown=1 x\n", "Dockerfile:2: unknown flag: --chown (RUN takes --mount, --network, --security)"),
    ("FROM a\nADD --from=x a b\n", "Dockerfile:2: unknown flag: --from (ADD takes --chown, --chmod, --link, "
                                   "--checksum, --keep-git-dir, --exclude, --unpack)"),
    ("FROM a\nENV --x=1 A=b\n", "Dockerfile:2: unknown flag: --x (ENV takes no flags)"),
    ("FROM a\nCMD --help\n", "Dockerfile:2: unknown flag: --help (CMD takes no flags)"),  # as in Docker
    ("FROM --os=linux a\n", "Dockerfile:1: unknown flag: --os (FROM takes --platform)"),
    ("FROM a\nCOPY --chown=1 --chown=2 a b\n", "Dockerfile:2: duplicate flag specified: chown"),
    ("FROM a\nCOPY --from a b\n", "Dockerfile:2: missing a value on flag: from"),
    ("FROM a\nCOPY --link=maybe a b\n", "Dockerfile:2: expecting boolean value for flag link, not: maybe"),
    ("FROM a\nRUN --mount=type=nfs,target=/x true\n", "Dockerfile:2: unsupported mount type \"nfs\""),
    ("FROM a\nRUN --mount=type=cache true\n", "Dockerfile:2: mount target is required: \"type=cache\""),
    ("FROM a\nRUN --network=bridge true\n", "Dockerfile:2: unsupported network mode \"bridge\""),
    ("FROM a\nRUN --security=root true\n", "Dockerfile:2: unsupported security mode \"root\""),
    ("FROM a\nONBUILD ONBUILD RUN x\n", "Dockerfile:2: Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
    ("FROM a\nONBUILD FROM b\n", "Dockerfile:2: FROM isn't allowed as an ONBUILD trigger"),
    ("FROM a\nONBUILD maintainer me\n", "Dockerfile:2: MAINTAINER isn't allowed as an ONBUILD trigger"),
    ("FROM a\nONBUILD\n", "Dockerfile:2: ONBUILD requires at least one argument"),
    ("FROM a\nONBUILD FORM b\n", "Dockerfile:2: unknown instruction: FORM"),
    ("FROM a\nHEALTHCHECK\n", "Dockerfile:2: HEALTHCHECK requires at least one argument"),
    ("FROM a\nHEALTHCHECK NONE x\n", "Dockerfile:2: HEALTHCHECK NONE takes no arguments"),
    ("FROM a\nHEALTHCHECK RUN x\n", "Dockerfile:2: Unknown type \"RUN\" in HEALTHCHECK (try CMD)"),
    ("FROM a\nHEALTHCHECK CMD\n", "Dockerfile:2: Missing command after HEALTHCHECK CMD"),
    ("FROM a\nHEALTHCHECK --interval=5 CMD x\n", "Dockerfile:2: time: missing unit in duration \"5\""),
    ("FROM a\nHEALTHCHECK --timeout=fast CMD x\n", "Dockerfile:2: time: invalid duration \"fast\""),
    ("FROM a\nHEALTHCHECK --interval=10us CMD x\n", "Dockerfile:2: Interval \"interval\" cannot be less than 1ms"),
    ("FROM a\nHEALTHCHECK --retries=-1 CMD x\n", "Dockerfile:2: --retries cannot be negative (-1)"),
    ("FROM a\nHEALTHCHECK --retries=two CMD x\n", "Dockerfile:2: strconv.ParseInt: parsing \"two\": invalid syntax"),
    ("FROM a\nCOPY onlyone\n", "Dockerfile:2: COPY requires at least two arguments, but only one was provided. "
                               "Destination could not be determined"),
    ("FROM a\nADD\n", "Dockerfile:2: ADD requires at least two arguments"),
    ("FROM a\nCOPY a <<EOF\nx\nEOF\n", "Dockerfile:2: COPY cannot accept a heredoc as a destination"),
    ("# escape=\\\n# escape=`\nFROM a\n", "Dockerfile:2: only one escape parser directive can be used"),
    ("# syntax=a\n#SYNTAX = b\nFROM a\n", "Dockerfile:2: only one syntax parser directive can be used"),
    ("# escape=x\nFROM a\n", "Dockerfile:1: invalid escape token 'x' does not match ` or \\"),
    ("FROM a\n\nRUN echo \\\n  a \\\n  b\nBOGUS\n", "Dockerfile:6: unknown instruction: BOGUS"),
    ("FROM a\nRUN a \\\n b\nEXPOSE \\\n\n", "Dockerfile:4: EXPOSE requires at least one argument"),  # first line
]


@pytest.mark.parametrize("text,message", ERRORS)
def test_errors_name_file_and_line(text, message):
    with pytest.raises(DockerfileError) as err:
        parse(text)
    assert str(err.value) == message
    assert isinstance(err.value, InvalidArgument)


def test_error_names_the_file_given():
    with pytest.raises(DockerfileError, match=r"^build/Containerfile:2: unknown instruction: NOPE$"):
        parse("FROM a\nNOPE\n", "build/Containerfile")


# ------------------------------------------------------------------------------------------------ directives

@pytest.mark.parametrize("head,escape,syntax", [
    ("# syntax=docker/dockerfile:1\n# escape=`\n", "`", "docker/dockerfile:1"),
    ("#\tSyNtAx = x:1  \n#ESCAPE=`\n", "`", "x:1"),  # keys case-insensitive, whitespace allowed
    ("\n# escape=`\n", "\\", None),  # a blank line ends the directives
    ("# a comment\n# escape=`\n", "\\", None),  # so does a comment
    ("# unknown=1\n# escape=`\n", "\\", None),  # and an unknown directive (a comment)
    ("# check=skip=JSONArgsRecommended\n# escape=`\n", "`", None),
])
def test_directives(head, escape, syntax):
    df = parse(head + "FROM a\n")
    assert (df.escape, df.syntax) == (escape, syntax)


def test_directive_after_an_instruction_is_a_comment():
    df = parse("FROM a\n# escape=`\nRUN a \\\n b\n")
    assert df.escape == "\\" and df.stages[0].instructions[0].args == ("a  b",)
    assert parse("# check=error=true\nFROM a\n").check == "error=true"


def test_windows_escape_backtick():
    df = parse("# escape=`\n\nFROM mcr.microsoft.com/windows/servercore\nCOPY testfile.txt c:\\\n"
               "RUN dir c:\\ `\n    && echo done\nENV P=c:\\x` y\nWORKDIR c:\\app\\\n")
    copy, run, env, workdir = df.stages[0].instructions
    assert copy.sources == ("testfile.txt",) and copy.dest == "c:\\"
    assert run.args == ("dir c:\\     && echo done",) and (run.line, run.end_line) == (5, 6)
    assert env.pairs == (("P", "c:\\x` y"),) and expand(env.pairs[0][1], {}, df.escape) == "c:\\x y"
    assert workdir.path == "c:\\app\\"


# ------------------------------------------------------------------------------------------------ lines

def test_continuations_comments_and_blank_lines():
    df = parse("FROM a\n"
               "RUN apt-get update \\   \n"  # spaces after the escape still continue
               "  # a comment inside the continuation is dropped\n"
               "\t# even an indented one\n"
               "  && apt-get install -y x \\\n"
               "\n"  # an empty continuation line is skipped, with a warning
               "  && echo '# not a comment'\n"
               "   # trailing comment line\n"
               "CMD echo done # this is an argument\n")
    run, cmd = df.stages[0].instructions
    assert run.args == ("apt-get update   && apt-get install -y x   && echo '# not a comment'",)
    assert (run.line, run.end_line) == (2, 7)
    assert cmd.args == ("echo done # this is an argument",) and cmd.line == 9
    assert df.warnings == ("Dockerfile:2: empty continuation line found in: " + run.original,)


def test_crlf_bom_and_case_insensitive_instructions():
    df = parse("\ufeff# escape=`\r\nfrom a as Build\r\nrun echo `\r\n  hi\r\nenv A=1\r\n")
    stage = df.stages[0]
    assert (df.escape, stage.name, stage.base) == ("`", "build", "a")
    run, env = stage.instructions
    assert (run.kind, run.args, env.kind, env.pairs) == ("RUN", ("echo   hi",), "ENV", (("A", "1"),))


def test_continuation_at_end_of_file():
    assert only("RUN echo a \\").args == ("echo a",)  # arguments are trimmed


# ------------------------------------------------------------------------------------------------ forms

@pytest.mark.parametrize("line,args,is_json", [
    ('CMD ["echo", "a \\"quoted\\" word"]', ("echo", 'a "quoted" word'), True),
    ('CMD ["caf\\u00e9", "😀", "\\ud83d\\ude00"]', ("café", "😀", "😀"), True),
    ('CMD ["\\ud800"]', ("\ufffd",), True),  # a lone surrogate becomes U+FFFD, as Go decodes it
    ("CMD []", (), True),
    ("CMD  [ \"a\" ]  ", ("a",), True),
    ("CMD [ -f /x ] && echo yes", ("[ -f /x ] && echo yes",), False),  # not JSON: shell form
    ('CMD ["a",]', ('["a",]',), False),  # invalid JSON is shell form too
    ("CMD ['single']", ("['single']",), False),
    ("CMD [NaN]", ("[NaN]",), False),
    ("CMD echo $HOME", ("echo $HOME",), False),  # never expanded by the builder
    ("CMD", (), False),
])
def test_exec_and_shell_forms(line, args, is_json):
    cmd = only(line)
    assert isinstance(cmd, Cmd) and (cmd.args, cmd.json) == (args, is_json)


def test_argv():
    assert only("ENTRYPOINT [\"/app\", \"-v\"]").argv(SH) == ["/app", "-v"]
    assert only("ENTRYPOINT exec /app").argv(["/bin/bash", "-c"]) == ["/bin/bash", "-c", "exec /app"]
    assert isinstance(only("ENTRYPOINT []"), Entrypoint)
    shell = only('SHELL ["powershell", "-command"]')
    assert isinstance(shell, Shell) and shell.args == ("powershell", "-command")


# ------------------------------------------------------------------------------------------------ heredocs

def test_heredoc_run_lone():
    run, user = parse("FROM a\nRUN <<EOF\napt-get update\n# a shell comment, kept\n\n  indented\nEOF\nUSER x\n"
                      ).stages[0].instructions
    assert user.user == "x" and user.line == 8
    (doc,) = run.heredocs
    assert (doc.name, doc.content, doc.expand, doc.chomp) == ("EOF", "apt-get update\n# a shell comment, kept\n\n"
                                                              "  indented\n", True, False)
    assert run.argv(SH) == SH + [doc.content] and run.inline_script() is None
    assert (run.line, run.end_line) == (2, 7)


def test_heredoc_chomp_and_quoted_delimiters():
    df = parse("FROM a\nRUN <<-EOF\n\techo one\n\t\techo two\n\tEOF\nRUN <<'EOF'\n$HOME\nEOF\nRUN <<\"EOF\"\nx\nEOF\n")
    chomped, single, double = (r.heredocs[0] for r in df.stages[0].instructions)
    assert chomped.chomp and chomped.content == "\techo one\n\t\techo two\n" and chomped.data == "echo one\necho two\n"
    assert (single.expand, single.content, double.expand) == (False, "$HOME\n", False)


def test_heredoc_several_on_one_line_and_complex_command():
    run = only("RUN <<A cat - /dev/fd/3 3<<-B > /out\nfirst\nA\n\tsecond\n\tB\n")
    assert [d.name for d in run.heredocs] == ["A", "B"]
    assert run.argv(SH) == SH + ["<<A cat - /dev/fd/3 3<<-B > /out\nfirst\nA\n\tsecond\nB"]


def test_heredoc_shebang_runs_as_a_script():
    run = only("RUN <<EOF\n#!/usr/bin/env python3\nprint('hi')\nEOF\n")
    assert run.inline_script() is run.heredocs[0] and run.argv(SH) == SH + ["/dev/pipes/EOF"]


def test_heredoc_python_stdin():
    run = only("RUN python3 <<EOF > /hello\nprint('x')\nEOF\n")
    assert run.argv(SH) == SH + ["python3 <<EOF > /hello\nprint('x')\nEOF"]


def test_no_heredoc_in_exec_form_or_quotes():
    df = parse('FROM a\nRUN ["cat", "<<EOF"]\nRUN echo "<<NOHEREDOC"\n', "F")
    run1, run2 = df.stages[0].instructions
    assert run1.heredocs == () and run2.heredocs == ()
    with pytest.raises(DockerfileError, match="^F:3: unknown instruction: X$"):
        parse('FROM a\nRUN ["<<EOF"]\nx\nEOF\n', "F")


def test_heredoc_copy():
    df = parse("FROM a\nCOPY --chmod=755 <<EOF /usr/bin/hello\n#!/bin/sh\necho \"$GREETING\"\nEOF\n"
               "COPY <<robots.txt <<'humans.txt' plain.txt /www/\nUser-agent: *\nrobots.txt\nme\nhumans.txt\n")
    one, two = df.stages[0].instructions
    assert isinstance(one, Copy) and one.sources == () and one.dest == "/usr/bin/hello" and one.chmod == "755"
    assert one.heredocs[0].content == '#!/bin/sh\necho "$GREETING"\n' and one.heredocs[0].expand
    assert two.sources == ("plain.txt",) and two.dest == "/www/"
    assert [(d.name, d.expand, d.content) for d in two.heredocs] == [("robots.txt", True, "User-agent: *\n"),
                                                                   ("humans.txt", False, "me\n")]
    assert (two.line, two.end_line) == (6, 10)


def test_heredoc_add_and_onbuild():
    df = parse("FROM a\nADD <<EOF /x\nbody\nEOF\nONBUILD RUN <<EOF\necho child\nEOF\n")
    add, onbuild = df.stages[0].instructions
    assert isinstance(add, Add) and add.heredocs[0].content == "body\n"
    assert isinstance(onbuild, Onbuild) and onbuild.expression == "RUN <<EOF\necho child\nEOF"
    assert onbuild.trigger.heredocs[0].content == "echo child\n"
    again = parse_trigger(onbuild.expression)
    assert isinstance(again, Run) and again.heredocs == onbuild.trigger.heredocs and again.args == ("<<EOF",)


# ------------------------------------------------------------------------------------------------ instructions

def test_key_value_instructions():
    df = parse('FROM a\nENV A=1 B="two words"\nENV LEGACY some value\nLABEL "com.x"="y" v=1\n'
               "ARG NAME\nARG V=1 W=\"x y\"\nMAINTAINER Jane <jane@example.com>\n")
    env, legacy, label, arg1, arg2, maint = df.stages[0].instructions
    assert isinstance(env, Env) and env.pairs == (("A", "1"), ("B", '"two words"'))
    assert legacy.pairs == (("LEGACY", "some value"),)
    assert isinstance(label, Label) and label.pairs == (('"com.x"', '"y"'), ("v", "1"))
    assert isinstance(arg1, Arg) and arg1.args == (("NAME", None),)
    assert arg2.args == (("V", "1"), ("W", '"x y"'))
    assert isinstance(maint, Maintainer) and maint.name == "Jane <jane@example.com>"
    assert df.warnings == ("Dockerfile:7: MAINTAINER is deprecated: use LABEL",)


def test_word_instructions():
    df = parse('FROM a\nEXPOSE 80 443/udp ${PORT}\nVOLUME /a /b\nVOLUME ["/c d"]\nUSER app:app\n'
               "WORKDIR /path with space\nSTOPSIGNAL SIGTERM\n")
    expose, vol1, vol2, user, workdir, stop = df.stages[0].instructions
    assert isinstance(expose, Expose) and expose.ports == ("80", "443/udp", "${PORT}")
    assert isinstance(vol1, Volume) and vol1.paths == ("/a", "/b") and vol2.paths == ("/c d",)
    assert isinstance(user, User) and user.user == "app:app"
    assert isinstance(workdir, Workdir) and workdir.path == "/path with space"
    assert isinstance(stop, StopSignal) and stop.signal == "SIGTERM"


def test_run_flags():
    run = only("RUN --mount=type=cache,target=/root/.cache --mount=type=secret,id=tok --network=none "
               "--security=insecure make")
    assert run.mounts == ("type=cache,target=/root/.cache", "type=secret,id=tok")
    assert (run.network, run.security, run.args) == ("none", "insecure", ("make",))


def test_copy_and_add_flags():
    df = parse('FROM a\nCOPY --from=build --chown=app:app --chmod=0644 --link --parents --exclude=*.md '
               '--exclude=x a b /dst/\nCOPY ["a b", "/c d/"]\n'
               "ADD --checksum=sha256:abc --keep-git-dir=true --link=false https://x/y.tgz /\n"
               'COPY --chown="a b" -- --weird /d\n')
    copy, copy_json, add, quoted = df.stages[0].instructions
    assert (copy.from_, copy.chown, copy.chmod, copy.link, copy.parents) == ("build", "app:app", "0644", True, True)
    assert copy.exclude == ("*.md", "x") and copy.sources == ("a", "b") and copy.dest == "/dst/"
    assert copy_json.json and copy_json.sources == ("a b",) and copy_json.dest == "/c d/"
    assert (add.checksum, add.keep_git_dir, add.link, add.sources) == ("sha256:abc", True, False, ("https://x/y.tgz",))
    assert quoted.chown == "a b" and quoted.sources == ("--weird",)


def test_healthcheck():
    df = parse("FROM a\nHEALTHCHECK NONE\nHEALTHCHECK --interval=1m30s --timeout=500ms --start-period=1.5s "
               "--start-interval=2s --retries=3 CMD curl -f http://localhost/ || exit 1\n"
               'HEALTHCHECK cmd ["/bin/check", "--deep"]\n')
    none, shell, exec_form = df.stages[0].instructions
    assert isinstance(none, Healthcheck) and none.test == ("NONE",)
    assert shell.test == ("CMD-SHELL", "curl -f http://localhost/ || exit 1")
    assert (shell.interval, shell.timeout, shell.start_period, shell.start_interval, shell.retries) == (
        90 * 10**9, 500 * 10**6, 1500 * 10**6, 2 * 10**9, 3)
    assert exec_form.test == ("CMD", "/bin/check", "--deep") and exec_form.interval == 0


def test_onbuild():
    onbuild = only("ONBUILD COPY --chown=1 . /app")
    assert onbuild.expression == "COPY --chown=1 . /app"
    assert isinstance(onbuild.trigger, Copy) and onbuild.trigger.chown == "1" and onbuild.trigger.line == 2
    assert isinstance(parse_trigger("ENV A=1"), Env)
    with pytest.raises(DockerfileError, match="^ONBUILD:1: FROM isn't allowed as an ONBUILD trigger$"):
        parse_trigger("FROM x")


# ------------------------------------------------------------------------------------------------ stages

def test_stages_and_global_args():
    df = parse("ARG BASE=busybox\nARG TAG\nFROM --platform=$BUILDPLATFORM ${BASE}:${TAG} AS Builder\nARG TAG\n"
               "RUN make\nFROM scratch\nCOPY --from=builder /out /\nFROM builder AS final\n")
    assert [a.args for a in df.global_args] == [(("BASE", "busybox"),), (("TAG", None),)]
    b, s, f = df.stages
    assert (b.index, b.name, b.base, b.platform, b.line) == (0, "builder", "${BASE}:${TAG}", "$BUILDPLATFORM", 3)
    assert [i.kind for i in b.instructions] == ["ARG", "RUN"]
    assert (s.name, s.base, s.platform, [i.kind for i in s.instructions]) == (None, "scratch", None, ["COPY"])
    assert (f.index, f.base, f.instructions) == (2, "builder", ())
    assert df.stage("BUILDER") is b and df.stage("1") is s and df.stage("3") is None and df.stage("x") is None
    assert b.original == "FROM --platform=$BUILDPLATFORM ${BASE}:${TAG} AS Builder"


# ------------------------------------------------------------------------------------------------ mounts

def test_mount_defaults():
    cache = parse_mount("type=cache,target=/root/.cache")
    assert (cache.id, cache.sharing, cache.readonly) == ("/root/.cache", "shared", False)
    bind = parse_mount("target=/src,from=build,source=/out")
    assert (bind.type, bind.readonly, bind.from_, bind.source) == ("bind", True, "build", "/out")
    assert parse_mount("target=/src,rw").readonly is False
    secret = parse_mount("type=secret,id=npmrc")
    assert (secret.id, secret.target, secret.required) == ("npmrc", "/run/secrets/npmrc", False)
    assert parse_mount("type=secret,target=/etc/token,required").id == "token"
    assert parse_mount("type=secret,id=t,env=TOKEN").target == ""
    tmpfs = parse_mount("type=tmpfs,dst=/tmp,size=64m")
    assert (tmpfs.target, tmpfs.size, tmpfs.readonly) == ("/tmp", 64 * 2**20, False)
    owned = parse_mount("type=cache,target=/c,id=x,sharing=locked,mode=0755,uid=1000,gid=1000")
    assert (owned.id, owned.sharing, owned.mode, owned.uid, owned.gid) == ("x", "locked", 0o755, 1000, 1000)
    expanded = parse_mount("type=cache,target=$DIR,id=${ID:-c}", lambda w: expand(w, {"DIR": "/d"}))
    assert (expanded.target, expanded.id) == ("/d", "c")


@pytest.mark.parametrize("spec,message", [
    ("type=bind,target=/x,mode=0755", 'mode not allowed for "bind" type mounts'),
    ("type=bind,target=/x,sharing=locked", "invalid cache sharing set for bind mount"),
    ("type=cache,target=/x,sharing=some", 'unsupported sharing value "some"'),
    ("type=cache,target=/x,color=red", "unexpected key 'color' in 'color=red'"),
    ("type=cache,target=/x,uid=root", "invalid value root for uid"),
    ("type=bind,target=/x,required", "unexpected key 'required' for mount type 'bind'"),
    ("type=secret,id=a,source=b", "both source and id can't be set"),
    ("type=secret", "invalid secret mount. one of source, target required"),
    ("type=cache,target", "invalid field 'target' must be a key=value pair"),
])
def test_mount_errors(spec, message):
    with pytest.raises(DockerfileError) as err:
        parse_mount(spec)
    assert str(err.value) == message
