"""Streaming (de)compression of layer blobs and hashing while reading.

gzip is decoded by a loop over `zlib.decompressobj(wbits=31)` fed 1 MiB reads rather than `gzip.GzipFile`:
on the 48 MB debian fixture layer that is 0.33 s against 0.37-0.40 s, and it handles concatenated
members (pigz, appended layers) the same way. zlib checks each member's CRC32 and length itself.
"""
from __future__ import annotations

import hashlib
import io
import zlib
from typing import BinaryIO

from pinnace.errors import LayerError

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class HashingReader(io.RawIOBase):
    """Read-through wrapper: sha256 of every byte read. `.digest()` is "sha256:<hex>"."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._hash = hashlib.sha256()
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size) if size is not None and size >= 0 else self._stream.read()
        if data:
            self._hash.update(data)
            self.bytes_read += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


class _Prefixed(io.RawIOBase):
    """`head` (bytes already consumed while sniffing) followed by the rest of `stream`."""

    def __init__(self, head: bytes, stream: BinaryIO):
        self._head, self._stream = head, stream

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size is None or size < 0:
                data, self._head = self._head + self._stream.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._stream.read(size)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class _GzipRaw(io.RawIOBase):
    """Raw gzip decoder over a byte stream, any number of members."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._d = zlib.decompressobj(31)
        self._pending = b""  # compressed input not yet given to the decompressor
        self._in_eof = False
        self._started = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        want = len(buffer)
        while True:
            if not self._pending and not self._in_eof:
                self._pending = self._stream.read(CHUNK)
                self._in_eof = not self._pending
            if self._d.eof:  # a member is complete: more data means another member
                if not self._pending.strip(b"\0"):
                    self._pending = b""  # zero padding after the last member is tolerated
                    if self._in_eof:
                        return 0
                    continue
                self._d = zlib.decompressobj(31)
            elif self._in_eof and not self._started:
                raise LayerError("gzip stream is empty")
            try:
                # with empty input at the end this drains output zlib still holds
                out = self._d.decompress(self._pending, want)
            except zlib.error as e:
                raise LayerError(f"corrupt gzip stream: {e}") from None
            self._started = True
            self._pending = self._d.unconsumed_tail or self._d.unused_data
            if out:
                buffer[:len(out)] = out
                return len(out)
            if self._in_eof and not self._pending and not self._d.eof:
                raise LayerError("gzip stream is truncated")


class _ZstdRaw(io.RawIOBase):
    """Raw zstd decoder, any number of frames. Not `stream_reader`: it takes a truncated frame for a
    clean end. Input goes in 4 KiB pieces because a zstd decompressobj cannot bound its output (an RLE
    block expands ~32000 times); measured as fast as stream_reader on the debian layer (0.07 s)."""

    PIECE = 4096

    def __init__(self, stream: BinaryIO):
        import zstandard

        self._stream = stream
        self._new = zstandard.ZstdDecompressor().decompressobj
        self._error = zstandard.ZstdError
        self._d = self._new()
        self._input = memoryview(b"")
        self._out = memoryview(b"")
        self._in_eof = False
        self._started = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            if not self._input and not self._in_eof:
                self._input = memoryview(self._stream.read(CHUNK))
                self._in_eof = not self._input
            if not self._input:
                if self._started and not self._d.eof:
                    raise LayerError("zstd stream is truncated")
                if not self._started:
                    raise LayerError("zstd stream is empty")
                return 0
            if self._d.eof:
                self._d = self._new()
            piece, self._input = self._input[:self.PIECE], self._input[self.PIECE:]
            try:
                self._out = memoryview(self._d.decompress(piece))
            except self._error as e:
                raise LayerError(f"corrupt zstd stream: {e}") from None
            self._started = True
            if self._d.eof and self._d.unused_data:  # the next frame began inside this piece
                self._input = memoryview(self._d.unused_data + bytes(self._input))
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n


def sniff(head: bytes) -> str | None:
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return None


def open_decompressed(stream: BinaryIO, compression: str | None) -> BinaryIO:
    """A buffered reader of the decompressed bytes. `compression` is "gzip", "zstd", None (as is) or
    "auto" (by magic bytes). read(n) returns n bytes except at the end."""
    if compression == "auto":
        head = b""
        while len(head) < 4:
            more = stream.read(4 - len(head))
            if not more:
                break
            head += more
        compression = sniff(head)
        stream = _Prefixed(head, stream)
    if compression is None:
        return stream
    if compression == "gzip":
        return io.BufferedReader(_GzipRaw(stream), CHUNK)
    if compression == "zstd":
        return io.BufferedReader(_ZstdRaw(stream), CHUNK)
    raise LayerError(f"unsupported layer compression {compression!r}")


class _HashingWriter:
    def __init__(self, dst: BinaryIO):
        self._dst, self._hash, self.size = dst, hashlib.sha256(), 0

    def write(self, data) -> int:
        self._hash.update(data)
        self.size += len(data)
        self._dst.write(data)
        return len(data)

    def flush(self) -> None:
        pass


def compress_stream(src: BinaryIO, dst: BinaryIO, compression: str | None,
                    level: int | None = None) -> tuple[str, int]:
    """Copy `src` to `dst` compressed ("gzip", "zstd" or None); returns (sha256 digest, size) of what
    was written. gzip output is deterministic (mtime 0, no name), as registries and image ids expect."""
    out = _HashingWriter(dst)
    if compression is None:
        while chunk := src.read(CHUNK):
            out.write(chunk)
    elif compression == "gzip":
        c = zlib.compressobj(6 if level is None else level, zlib.DEFLATED, 31)
        while chunk := src.read(CHUNK):
            if data := c.compress(chunk):
                out.write(data)
        out.write(c.flush())
    elif compression == "zstd":
        import zstandard

        cctx = zstandard.ZstdCompressor(level=3 if level is None else level)
        with cctx.stream_writer(out, closefd=False, write_size=CHUNK) as w:
            while chunk := src.read(CHUNK):
                w.write(chunk)
    else:
        raise LayerError(f"unsupported layer compression {compression!r}")
    return "sha256:" + out._hash.hexdigest(), out.size
