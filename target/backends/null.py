"""Type=nullio (IET's): writes are discarded, reads return zeros; for protocol benchmarks.

An inline backend: it never waits, so every command to it finishes at once on the event
loop, which measures the iSCSI path alone."""

from __future__ import annotations

from .base import Backend, Buffer, Calls, Capabilities
from .registry import BackendType, Key, Opening, parse_blocks

DEFAULT_BLOCKS = 20971520  # IET's default: 10 GiB of 512-byte blocks


class NullBackend:
    caps = Capabilities(calls=Calls.INLINE, can_write=True, can_flush=True, can_trim=True,
                        trim_zeroes=True, can_zero=True, can_extents=True)

    def __init__(self, size: int) -> None:
        self.size = size
        self.block_size = 512
        self.description = f"nullio {size} bytes"

    def read(self, offset: int, into: bytearray) -> None:
        into[:] = bytes(len(into))

    def write(self, offset: int, data: Buffer, fua: bool = False) -> None:
        return None

    def flush(self) -> None:
        return None

    def trim(self, offset: int, length: int) -> None:
        return None

    def zero(self, offset: int, length: int, may_trim: bool) -> None:
        return None

    def extents(self, offset: int) -> tuple[bool, int]:
        return False, self.size - offset

    def close(self) -> None:
        return None


def _open(opening: Opening) -> Backend:
    blocks = opening.options.get("blocks") or opening.options.get("sectors") or DEFAULT_BLOCKS
    return NullBackend(blocks * opening.block_size)


TYPES = (BackendType(
    "nullio", "a data sink for benchmarks: reads return zeros, writes are dropped",
    (Key("Blocks", parse_blocks, meaning=f"its size in blocks (default {DEFAULT_BLOCKS})"),
     Key("Sectors", parse_blocks, meaning="the same as Blocks")), _open),)
