"""The backend contract: what a logical unit needs from its storage.

Backends are synchronous and may block; the logical unit calls them from worker threads.
"""

from __future__ import annotations

from typing import Protocol

from blockbridge.iscsi.framing import FileRange


class Backend(Protocol):
    size: int  # bytes
    read_only: bool
    can_unmap: bool
    description: str

    def read(self, offset: int, length: int) -> bytes | bytearray: ...

    def read_into(self, offset: int, into: bytearray) -> None:
        """Fill all of ``into`` from ``offset`` (zeros past the end of the store)."""
        ...

    def read_cached(self, offset: int, into: bytearray) -> bool:
        """Fill ``into`` from ``offset`` if that needs no wait for the disk (the range is
        in the page cache); False otherwise.  Called on the event loop: never blocks."""
        ...

    def cached_range(self, offset: int, length: int) -> FileRange | None:
        """The range as a :class:`FileRange` to send with ``sendfile`` if all of it is in
        the page cache; None otherwise, or where the backend cannot tell.  Called on the
        event loop: never blocks."""
        ...

    def write(
        self, offset: int, data: bytes | bytearray | memoryview, sync: bool = False
    ) -> None: ...

    def write_cached(self, offset: int, data: memoryview) -> bool:
        """Write into the page cache on the event loop if that is expected to be quick;
        False (nothing written) when the caller should use a worker thread instead."""
        ...

    def flush(self) -> None: ...

    def unmap(self, offset: int, length: int) -> None:
        """Deallocate a byte range; reads return zeros afterwards."""
        ...

    def mapped_extent(self, offset: int) -> tuple[bool, int]:
        """(allocated?, length in bytes of the run of that state starting at offset)."""
        ...

    def close(self) -> None: ...
