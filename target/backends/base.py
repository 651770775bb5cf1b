"""The backend contract: what a logical unit needs from its storage, shaped like nbdkit's.

A backend has a small required core: ``size`` and ``block_size`` (bytes), ``description``,
``read``, ``write`` and ``close``.  Everything else is *declared* in its
:class:`Capabilities`, and the target chooses its strategy from the declarations alone:

- ``calls``: how it wants to be called.  ``BLOCKING`` methods may wait for a disk and run
  in worker threads; ``ASYNC`` methods are coroutines run on the trio event loop (a
  network client that multiplexes its own requests); ``INLINE`` methods never wait (memory,
  nullio) and run on the event loop, so their commands finish at once.
- ``can_write``, ``can_flush``, ``can_fua`` (none/emulate/native), ``can_trim``,
  ``can_zero``, ``can_extents``, ``can_cache``: which optional methods exist.  The SCSI
  commands that need them (SYNCHRONIZE CACHE, UNMAP, GET LBA STATUS...) are offered only
  where they are declared.
- ``file``: optional accelerations of a backend that is one file descriptor, offset for
  offset (:class:`FileAccess`): page-cache reads and writes on the event loop, io_uring,
  ``sendfile``; the I/O engine uses them, never a class check.

This module knows nothing of iSCSI or SCSI: a backend is just storage.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

Buffer = bytes | bytearray | memoryview


class BackingStoreError(Exception):
    """A LUN's storage cannot be used; the message says why and what to do."""


class Fua(enum.Enum):
    """How a backend honours "force unit access" on a write (nbdkit's can_fua)."""

    NONE = "none"  # it cannot: the target flushes after the write (if it can flush)
    EMULATE = "emulate"  # write(fua=True) flushes after writing, inside the backend
    NATIVE = "native"  # write(fua=True) is durable by itself


class Calls(enum.Enum):
    """How the target calls a backend's methods."""

    BLOCKING = "blocking"  # plain methods that may block: in worker threads
    ASYNC = "async"  # coroutine methods: awaited on the trio event loop
    INLINE = "inline"  # plain methods that never block: called on the event loop


@dataclass(frozen=True)
class FileAccess:
    """Accelerations a backend declares when its storage is one file descriptor, byte
    for byte: the I/O engine may then read and write that descriptor itself."""

    fileno: Callable[[], int]  # the descriptor; -1 once closed
    page_cache: bool = False  # RWF_NOWAIT reads and whole-page writes on the event loop,
    #                           cachestat + sendfile for large cached reads
    io_uring: bool = False  # reads, writes and fdatasync through io_uring
    punch_hole: bool = False  # trim is fallocate(PUNCH_HOLE)
    seek_data: bool = False  # extents are lseek(SEEK_DATA/SEEK_HOLE)


@dataclass(frozen=True)
class Capabilities:
    calls: Calls = Calls.BLOCKING
    can_write: bool = True
    can_flush: bool = False
    can_fua: Fua = Fua.NONE
    can_trim: bool = False
    trim_zeroes: bool = False  # trimmed blocks read back as zeros (SCSI's LBPRZ)
    can_zero: bool = False
    can_extents: bool = False
    can_cache: bool = False
    file: FileAccess | None = None

    def summary(self) -> str:
        """The declarations in one line, for logs and status output."""
        flags = [name for name in ("can_write", "can_flush", "can_trim", "can_zero",
                                   "can_extents", "can_cache") if getattr(self, name)]
        if self.can_fua is not Fua.NONE:
            flags.append(f"fua={self.can_fua.value}")
        if self.file is not None:
            flags += [name for name in ("page_cache", "io_uring", "punch_hole", "seek_data")
                      if getattr(self.file, name)]
        return f"{self.calls.value}: " + (", ".join(flags) or "read-only")


class Backend(Protocol):
    """The contract.  Offsets and lengths are in bytes, within ``size``.  With
    ``Calls.ASYNC`` every method below except ``close`` is a coroutine function.

    Required: ``read`` fills all of ``into`` (zeros past the end of the store);
    ``write`` writes all of ``data`` (``fua`` only when declared).  Optional, called only
    when declared: ``flush()`` (can_flush), ``trim(offset, length)`` (can_trim),
    ``zero(offset, length, may_trim)`` (can_zero), ``extents(offset)`` -> (allocated?,
    bytes of that state from offset) (can_extents), ``cache(offset, length)`` (can_cache,
    a prefetch hint)."""

    size: int
    block_size: int  # the smallest unit it addresses; a LUN's block size is a multiple
    description: str
    caps: Capabilities

    def close(self) -> None: ...
