"""Type=memory: a sparse disk in the target's memory, gone when it stops (tests, demos).

Like ``nbdkit memory``: only the chunks written hold memory; trimmed or zeroed chunks give
it back.  An inline backend: its commands finish at once on the event loop."""

from __future__ import annotations

from .base import Backend, Buffer, Calls, Capabilities
from .registry import BackendType, Key, Opening, parse_size

CHUNK = 4096


class MemoryBackend:
    caps = Capabilities(calls=Calls.INLINE, can_write=True, can_flush=True, can_trim=True,
                        trim_zeroes=True, can_zero=True, can_extents=True)

    def __init__(self, size: int) -> None:
        self.size = size
        self.block_size = 512
        self.description = f"memory {size} bytes"
        self._chunks: dict[int, bytearray] = {}  # chunk number -> its CHUNK bytes

    @property
    def allocated(self) -> int:
        """Bytes of memory the data holds."""
        return len(self._chunks) * CHUNK

    def _pieces(self, offset: int, length: int) -> list[tuple[int, int, int, int]]:
        """(chunk number, offset in it, length, offset in the request) covering a range."""
        out = []
        done = 0
        while done < length:
            index, start = divmod(offset + done, CHUNK)
            n = min(CHUNK - start, length - done)
            out.append((index, start, n, done))
            done += n
        return out

    def read(self, offset: int, into: bytearray) -> None:
        view = memoryview(into)
        for index, start, n, at in self._pieces(offset, len(view)):
            chunk = self._chunks.get(index)
            view[at : at + n] = chunk[start : start + n] if chunk is not None else bytes(n)

    def write(self, offset: int, data: Buffer, fua: bool = False) -> None:
        view = memoryview(data).cast("B")
        for index, start, n, at in self._pieces(offset, view.nbytes):
            chunk = self._chunks.get(index)
            if chunk is None:
                chunk = self._chunks[index] = bytearray(CHUNK)
            chunk[start : start + n] = view[at : at + n]

    def flush(self) -> None:
        return None

    def trim(self, offset: int, length: int) -> None:
        for index, start, n, _at in self._pieces(offset, length):
            chunk = self._chunks.get(index)
            if chunk is None:
                continue
            chunk[start : start + n] = bytes(n)
            if n == CHUNK or chunk.count(0) == CHUNK:
                del self._chunks[index]

    def zero(self, offset: int, length: int, may_trim: bool) -> None:
        self.trim(offset, length)  # reads of missing chunks are zeros either way

    def extents(self, offset: int) -> tuple[bool, int]:
        index = offset // CHUNK
        allocated = index in self._chunks
        last = min((self.size - 1) // CHUNK, index + 65536)  # runs are reported in pieces
        while index < last and ((index + 1) in self._chunks) == allocated:
            index += 1
        return allocated, min((index + 1) * CHUNK, self.size) - offset

    def close(self) -> None:
        self._chunks.clear()


def _open(opening: Opening) -> Backend:
    return MemoryBackend(opening.options["size"])


TYPES = (BackendType(
    "memory", "a sparse disk in the target's memory, lost when it stops",
    (Key("Size", parse_size, required=True, meaning="its size, e.g. 1G"),), _open),)
