#!/bin/sh
# pinnace @VERSION@ — a one-file executable: this POSIX sh launcher, then a gzip'd tar of pinnace's
# PyInstaller one-directory build (packaging/build writes both; packaging/launcher.sh is the template).
#
# The first run of a version unpacks the bundle once into a per-user cache and checks it runs; every
# run then checks that copy and executes it, which costs about a millisecond. The helpers pinnace leaves
# running (container supervisors, the namespace holder, fuse daemons) re-execute that unpacked copy,
# which stays where it is while they run.
#   cache: $PINNACE_CACHE_DIR, else ${XDG_CACHE_HOME:-$HOME/.cache}/pinnace/exe; one VERSION-HASH
#          directory per build (delete old ones when no container of that version runs any more)
#   first run needs: tail, gzip, tar, sha256sum, mkdir, mv, rm (and flock where installed)
#   runs on: Linux @ARCH@ with glibc >= @GLIBC@
v='@VERSION@' h='@HASH@' sum='@SHA256@' off=@OFFSET@

case $0 in /*) self=$0 ;; *) self=$PWD/$0 ;; esac
if [ -n "${PINNACE_CACHE_DIR-}" ]; then base=$PINNACE_CACHE_DIR
elif [ -n "${XDG_CACHE_HOME-}" ]; then base=$XDG_CACHE_HOME/pinnace/exe
elif [ -n "${HOME-}" ]; then base=$HOME/.cache/pinnace/exe
else
    echo "pinnace: neither HOME nor PINNACE_CACHE_DIR is set: no place to unpack pinnace to" >&2
    exit 125
fi
dir=$base/$v-$h

intact() {  # the marker is written last, before the directory gets its final name
    [ -s "$dir/.complete" ] && [ -x "$dir/pinnace" ] && [ -s "$dir/_internal/@LIBPYTHON@" ] \
        && [ -s "$dir/_internal/pinnace/__main__.pyc" ] && [ -s "$dir/.manifest" ]
}

fail() {
    echo "pinnace: $*" >&2
    [ -n "${tmp-}" ] && rm -rf "$tmp"
    exit 125
}

unpack() {
    for tool in tail gzip tar sha256sum; do
        command -v "$tool" >/dev/null 2>&1 || fail "$tool is needed to unpack pinnace on its first run"
    done
    (umask 077 && mkdir -p "$base") 2>/dev/null || fail "cannot create $base (set PINNACE_CACHE_DIR to a writable directory)"
    [ -O "$base" ] && [ -w "$base" ] || fail "$base is not a directory of yours (set PINNACE_CACHE_DIR)"
    # One unpacker at a time; the others wait here, then find the copy ready.
    locked=0
    if command -v flock >/dev/null 2>&1 && exec 9>>"$base/.lock" && flock 9; then locked=1; fi
    if intact; then
        [ "$locked" = 1 ] && exec 9>&-
        return 0
    fi
    # Holding the lock, any temporary directory left here belongs to an unpacker that died.
    [ "$locked" = 1 ] && rm -rf "$base"/.tmp-* "$base"/.old-*
    tmp=$base/.tmp-$$
    rm -rf "$tmp" && mkdir "$tmp" || fail "cannot create $tmp"
    got=$(tail -c +$((off + 1)) "$self" | sha256sum) || fail "cannot read $self"
    [ "${got%% *}" = "$sum" ] || fail "$self is damaged (its payload checksum does not match: an incomplete download?); download it again"
    tail -c +$((off + 1)) "$self" | gzip -dc | tar -x -m --no-same-owner -f - -C "$tmp" \
        || fail "cannot unpack pinnace into $tmp (is the disk full?)"
    # Run it once before it counts as ready: a noexec file system or a too-old glibc shows here.
    if ! out=$("$tmp/pinnace" --version 2>&1 </dev/null); then
        fail "the unpacked pinnace in $base does not start (it needs glibc >= @GLIBC@ and a file system that allows executables; PINNACE_CACHE_DIR chooses another place):
$out"
    fi
    real=$(cd "$base" && pwd -P) || fail "cannot resolve $base"
    printf '%s\n' "$real/$v-$h/pinnace" >"$tmp/.complete" || fail "cannot write to $tmp"
    sync -f "$tmp" 2>/dev/null
    if [ -e "$dir" ] || [ -L "$dir" ]; then   # a damaged copy: out of the way first
        mv -T -- "$dir" "$base/.old-$$" || fail "cannot move the damaged $dir away"
    fi
    mv -T -- "$tmp" "$dir" || fail "cannot rename $tmp to $dir"
    tmp=
    rm -rf "$base/.old-$$"
    [ "$locked" = 1 ] && exec 9>&-
    return 0
}

intact || unpack

real=
IFS= read -r real <"$dir/.complete"
if [ -n "$real" ] && [ "$real" -ef "$dir/pinnace" ]; then
    # Do what PyInstaller's bootloader would do before restarting itself to apply the library path:
    # it then starts as its main process at once, a millisecond sooner. It compares _PYI_ARCHIVE_FILE
    # with the real path of its executable (hence the real path recorded at unpacking) and falls back
    # to its own restart when they differ.
    if [ -n "${LD_LIBRARY_PATH-}" ]; then
        LD_LIBRARY_PATH_ORIG=$LD_LIBRARY_PATH
        export LD_LIBRARY_PATH_ORIG
        LD_LIBRARY_PATH=${real%/*}/_internal:$LD_LIBRARY_PATH
    else
        unset LD_LIBRARY_PATH_ORIG
        LD_LIBRARY_PATH=${real%/*}/_internal
    fi
    _PYI_ARCHIVE_FILE=$real
    _PYI_PARENT_PROCESS_LEVEL=-1
    export LD_LIBRARY_PATH _PYI_ARCHIVE_FILE _PYI_PARENT_PROCESS_LEVEL
else
    real=$dir/pinnace
    unset _PYI_ARCHIVE_FILE _PYI_PARENT_PROCESS_LEVEL
fi
unset _PYI_LINUX_PROCESS_NAME _PYI_APPLICATION_HOME_DIR
PINNACE_LAUNCHER=$self
export PINNACE_LAUNCHER
exec "$real" "$@"
exit 127
