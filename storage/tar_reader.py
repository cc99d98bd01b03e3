"""A sequential tar reader for layer streams: ustar, PAX (x and g), GNU long names and all GNU sparse forms.

Why not `tarfile` in `r|` mode: it reads in 10 KiB records and copies through 16 KiB buffers; this reader
takes 1 MiB reads, hands file data to `os.write` as memoryviews, and keeps xattr values as raw bytes (PAX
`SCHILY.xattr.*` values are binary, e.g. security.capability). It never seeks, and `drain()` reads the
stream to its very end (padding after the end-of-archive blocks too) so a caller hashing the stream for
the layer's diff-id sees every byte.
"""
from __future__ import annotations

import os
from typing import BinaryIO, Iterator

from pinnace.errors import LayerError

BLOCK = 512
CHUNK = 1 << 20
MAX_META = 16 << 20  # PAX / long-name payloads larger than this are hostile
ZERO_BLOCK = bytes(BLOCK)

REGULAR, HARDLINK, SYMLINK, CHARDEV, BLOCKDEV, DIRECTORY, FIFO = "0", "1", "2", "3", "4", "5", "6"
_TYPES = {b"0": REGULAR, b"\0": REGULAR, b"7": REGULAR, b"S": REGULAR, b"1": HARDLINK, b"2": SYMLINK,
          b"3": CHARDEV, b"4": BLOCKDEV, b"5": DIRECTORY, b"D": DIRECTORY, b"6": FIFO}


class Source:
    """Buffered, forward-only view of the tar stream."""

    __slots__ = ("_read", "_buf", "_pos")

    def __init__(self, stream: BinaryIO):
        self._read = stream.read
        self._buf = b""
        self._pos = 0

    def take(self, n: int, eof_ok: bool = False) -> bytes | None:
        """Exactly n bytes (None at a clean end of stream when eof_ok)."""
        pos, end = self._pos, self._pos + n
        if end <= len(self._buf):
            self._pos = end
            return self._buf[pos:end]
        parts, have = [self._buf[pos:]], len(self._buf) - pos
        while have < n:
            chunk = self._read(max(CHUNK, n - have))
            if not chunk:
                if eof_ok and have == 0:
                    self._buf, self._pos = b"", 0
                    return None
                raise LayerError("layer tar is truncated")
            parts.append(chunk)
            have += len(chunk)
        self._buf = b"".join(parts)
        self._pos = n
        return self._buf[:n]

    def copy_to(self, fd: int, n: int) -> None:
        """Write the next n bytes of the stream to fd (or drop them when fd < 0)."""
        while n > 0:
            avail = len(self._buf) - self._pos
            if avail <= 0:
                self._buf, self._pos = self._read(CHUNK), 0
                avail = len(self._buf)
                if not avail:
                    raise LayerError("layer tar is truncated")
            k = avail if avail < n else n
            if fd >= 0:
                view = memoryview(self._buf)[self._pos:self._pos + k]
                while view:
                    view = view[os.write(fd, view):]
            self._pos += k
            n -= k

    def skip(self, n: int) -> None:
        self.copy_to(-1, n)

    def drain(self) -> None:
        self._buf, self._pos = b"", 0
        while self._read(CHUNK):
            pass


class Entry:
    """One member as the applier needs it; `sparse` is [(offset, length)] for sparse files."""

    __slots__ = ("name", "type", "size", "mode", "uid", "gid", "mtime_ns", "linkname", "devmajor",
                 "devminor", "xattrs", "sparse", "realsize", "remaining")

    def __repr__(self) -> str:
        return f"Entry({self.name!r}, type {self.type!r}, size {self.size})"


def _num(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for values octal cannot hold
        if field[0] == 0xFF:
            return int.from_bytes(field, "big", signed=True)
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise LayerError(f"invalid number {field!r} in a layer tar header") from None


def _cstr(raw: bytes) -> str:
    nul = raw.find(b"\0")
    return os.fsdecode(raw if nul < 0 else raw[:nul])


def _checksum_ok(block: bytes) -> bool:
    try:
        want = _num(block[148:156])
    except LayerError:
        return False
    unsigned = sum(block) - sum(block[148:156]) + 256
    if want == unsigned:
        return True
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 256
    return want == signed


def _parse_pax(data: bytes) -> list[tuple[str, bytes]]:
    records, pos = [], 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise LayerError("malformed PAX header in layer tar") from None
        record = data[space + 1:pos + length]
        if space < 0 or length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise LayerError("malformed PAX header in layer tar")
        key, _, value = record[:-1].partition(b"=")
        records.append((key.decode("utf-8", "surrogateescape"), value))
        pos += length
    return records


def _pax_time_ns(value: bytes) -> int:
    text = value.decode("ascii", "replace").strip()
    neg = text.startswith("-")
    sec, _, frac = text.lstrip("-").partition(".")
    try:
        ns = int(sec or "0") * 1_000_000_000 + int((frac + "000000000")[:9] or "0")
    except ValueError:
        raise LayerError(f"invalid PAX mtime {text!r}") from None
    return -ns if neg else ns


def _gnu_sparse_map(block: bytes, src: Source) -> list[tuple[int, int]]:
    """Old GNU 'S' entries: 4 map slots in the header, 21 per extension block."""
    pairs, area, more = [], block[386:482], block[482]
    while True:
        for i in range(0, len(area), 24):
            off, length = _num(area[i:i + 12]), _num(area[i + 12:i + 24])
            if off or length:
                pairs.append((off, length))
        if not more:
            return pairs
        ext = src.take(BLOCK)
        area, more = ext[:504], ext[504]


def _sparse_map_10(src: Source, entry: Entry) -> list[tuple[int, int]]:
    """PAX sparse 1.0: the map is decimal lines at the start of the data, padded to whole blocks."""
    text, numbers, count = b"", [], None
    while count is None or len(numbers) < 1 + 2 * count:
        if entry.remaining < BLOCK:
            raise LayerError(f"bad sparse map in layer entry {entry.name!r}")
        text += src.take(BLOCK)
        entry.remaining -= BLOCK
        *done, text = text.split(b"\n")
        numbers += [int(x) for x in done]
        if count is None and numbers:
            count = numbers[0]
    return list(zip(numbers[1::2], numbers[2::2]))


def _sparse_from_pax(pax: list[tuple[str, bytes]]) -> list[tuple[int, int]] | None:
    offsets = [int(v) for k, v in pax if k == "GNU.sparse.offset"]  # format 0.0 repeats the keys
    if offsets:
        return list(zip(offsets, (int(v) for k, v in pax if k == "GNU.sparse.numbytes")))
    for k, v in pax:
        if k == "GNU.sparse.map":  # format 0.1
            nums = [int(x) for x in v.split(b",") if x]
            return list(zip(nums[0::2], nums[1::2]))
    return None


def _apply_pax(entry: Entry, pax: list[tuple[str, bytes]], src: Source) -> None:
    major = None
    for key, value in pax:
        if key == "path" or key == "GNU.sparse.name":
            entry.name = os.fsdecode(value)
        elif key == "linkpath":
            entry.linkname = os.fsdecode(value)
        elif key == "size":
            entry.size = int(value)
        elif key == "uid":
            entry.uid = int(value)
        elif key == "gid":
            entry.gid = int(value)
        elif key == "mtime":
            entry.mtime_ns = _pax_time_ns(value)
        elif key.startswith("SCHILY.xattr."):
            entry.xattrs[key[13:]] = value
        elif key in ("GNU.sparse.size", "GNU.sparse.realsize"):
            entry.realsize = int(value)
        elif key == "GNU.sparse.major":
            major = value
    try:
        sparse = _sparse_from_pax(pax)
    except ValueError:
        raise LayerError(f"bad sparse map in layer entry {entry.name!r}") from None
    entry.remaining = entry.size
    if sparse is None and major == b"1":
        try:
            sparse = _sparse_map_10(src, entry)
        except ValueError:
            raise LayerError(f"bad sparse map in layer entry {entry.name!r}") from None
    if sparse is not None:
        entry.sparse = sparse


def entries(src: Source) -> Iterator[Entry]:
    """Yield each member; the consumer reads its data with `copy_data` (or not: the rest is skipped)."""
    global_pax: dict[str, bytes] = {}
    while True:
        block = src.take(BLOCK, eof_ok=True)
        if block is None or block == ZERO_BLOCK:
            break  # end-of-archive (a missing second zero block or a bare end is tolerated)
        pax: list[tuple[str, bytes]] = []
        longname = longlink = None
        while True:
            if not _checksum_ok(block):
                raise LayerError("layer tar header checksum mismatch (corrupt or not a tar stream)")
            kind = block[156:157]
            if kind not in (b"x", b"g", b"L", b"K"):
                break
            size = _num(block[124:136])
            if not 0 <= size <= MAX_META:
                raise LayerError(f"oversized extended header ({size} bytes) in layer tar")
            data = src.take(size)
            src.skip(-size % BLOCK)
            if kind == b"x":
                pax += _parse_pax(data)
            elif kind == b"g":
                for k, v in _parse_pax(data):
                    if v:
                        global_pax[k] = v
                    else:
                        global_pax.pop(k, None)
            elif kind == b"L":
                longname = _cstr(data)
            else:
                longlink = _cstr(data)
            block = src.take(BLOCK)
        typ = _TYPES.get(kind)
        if typ is None:
            raise LayerError(f"unsupported tar entry type {kind!r} in layer")
        e = Entry()
        if longname is not None:
            e.name = longname
        elif block[257:263] == b"ustar\x00" and block[345]:  # POSIX prefix (GNU uses this area otherwise)
            e.name = _cstr(block[345:500]) + "/" + _cstr(block[:100])
        else:
            e.name = _cstr(block[:100])
        e.type = typ
        e.size = _num(block[124:136])
        e.mode = _num(block[100:108]) & 0o7777
        e.uid = _num(block[108:116])
        e.gid = _num(block[116:124])
        e.mtime_ns = _num(block[136:148]) * 1_000_000_000
        e.linkname = longlink if longlink is not None else _cstr(block[157:257])
        e.devmajor = _num(block[329:337])
        e.devminor = _num(block[337:345])
        e.xattrs = {}
        e.sparse = None
        e.realsize = e.size
        e.remaining = e.size
        if kind == b"S":
            e.sparse = _gnu_sparse_map(block, src)
            e.realsize = _num(block[483:495])
        if global_pax:
            pax = list(global_pax.items()) + pax
        if pax:
            _apply_pax(e, pax, src)
        if e.size < 0 or e.uid < 0 or e.gid < 0 or e.realsize < 0:
            raise LayerError(f"layer entry {e.name!r} has a negative size or id")
        if typ != REGULAR:
            e.realsize = 0
        yield e
        stored = e.size
        src.skip(e.remaining + (-stored % BLOCK))
    src.drain()


def copy_data(src: Source, entry: Entry, fd: int) -> None:
    """Write a regular file's content to fd (sparse maps become holes: seek, write, truncate)."""
    if entry.sparse is None:
        src.copy_to(fd, entry.remaining)
        entry.remaining = 0
        return
    stored, last = 0, 0
    for off, length in entry.sparse:
        if off < last or length < 0 or off + length > entry.realsize:
            raise LayerError(f"bad sparse map in layer entry {entry.name!r}")
        stored += length
        if stored > entry.remaining:
            raise LayerError(f"sparse map of layer entry {entry.name!r} exceeds its data")
        os.lseek(fd, off, os.SEEK_SET)
        src.copy_to(fd, length)
        last = off + length
    entry.remaining -= stored
    os.ftruncate(fd, entry.realsize)
