"""A reader that runs its source in a second thread, so reading (network, blob file, decompression,
hashing — all of which release the GIL) overlaps with what the consumer does (tar apply: creating files).

On two cores this takes the decompress-and-hash half of a layer pull off the unpacking thread.
Errors of the source (a digest mismatch at EOF, a dropped connection) surface in the consumer's `read`,
or in `finish()`, which also waits for the source to reach its end.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable

CHUNK = 1 << 20
DEPTH = 8  # chunks in flight: bounds the memory to ~8 MiB


class ReadAhead:
    def __init__(self, source, *, after_eof: Callable[[], None] | None = None,  # noqa: ANN001 - any reader
                 chunk: int = CHUNK, depth: int = DEPTH):
        self._source, self._after_eof, self._chunk = source, after_eof, chunk
        self._queue: queue.Queue[bytes | None] = queue.Queue(depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._buf = b""
        self._pos = 0
        self._done = False
        self._thread = threading.Thread(target=self._produce, name="pinnace-readahead", daemon=True)
        self._thread.start()

    # -- producer thread ------------------------------------------------------------------------------
    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._source.read(self._chunk)
                if not data:
                    if self._after_eof is not None:
                        self._after_eof()
                    break
                self._put(data)
        except BaseException as exc:  # handed to the consumer thread
            self._error = exc
        finally:
            self._put(None)

    def _put(self, item: bytes | None) -> None:
        while True:
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if self._stop.is_set():
                    return

    # -- consumer side ----------------------------------------------------------------------------------
    def read(self, n: int = -1) -> bytes:
        if self._pos >= len(self._buf):
            if self._done:
                return b""
            item = self._queue.get()
            if item is None:
                self._done = True
                self._thread.join()
                if self._error is not None:
                    raise self._error
                return b""
            self._buf, self._pos = item, 0
        end = len(self._buf) if n is None or n < 0 else min(len(self._buf), self._pos + n)
        data = self._buf[self._pos:end]
        self._pos = end
        return data

    def readable(self) -> bool:
        return True

    def finish(self) -> None:
        """Read to the end (the source's after_eof ran), raising the source's error if it had one."""
        while self.read(self._chunk):
            pass

    def close(self) -> None:
        """Stop the producer early (the consumer failed) and wait for it."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
