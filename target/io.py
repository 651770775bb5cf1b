"""The I/O engine: how a logical unit's reads, writes and flushes reach its backend.

The strategy comes from the backend's declared capabilities (see backends/base.py),
never from its class:

- at once, on the event loop, with no task: every call of an ``INLINE`` backend; for a
  backend that declares ``FileAccess(page_cache=True)``, reads that hit the page cache
  (``RWF_NOWAIT``), large cached reads as file ranges for ``sendfile``, and whole-page
  writes into the page cache;
- started on io_uring and completed by a callback: reads that missed the page cache, for
  a backend that declares ``FileAccess(io_uring=True)``; io_uring also carries its
  writes and flushes when a task waits for them.  After a run of misses (a cold random
  load), small reads go to io_uring without first trying the page cache: the kernel
  starts their disk reads together, one batch per pass of the event loop, instead of
  one by one in each failed try (a look at the page cache still comes every few reads,
  and a hit ends the run);
- awaited on the event loop: every call of an ``ASYNC`` backend (a network client);
- in worker threads: every other call of a ``BLOCKING`` backend.

FUA is passed to a backend that declares it (emulated or native), and otherwise becomes
a flush after the write.  Read buffers are recycled through a pool once sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from blockbridge.buffers import BufferPool
from blockbridge.iscsi.framing import FileRange
from blockbridge.iscsi.pdu import Buffer
from blockbridge.poller import elsewhere

from .backends.base import Backend, Calls, Fua
from .pagecache import PageCacheAccess
from .uring import Done, Uring, open_uring

IO_THREADS = 32
# Reads of this size or less that miss the page cache go to io_uring; larger ones to a
# thread (one system call reads them whole, and a thread hop is small beside their copy).
URING_READ = 64 << 10
# After this many page-cache misses in a row, reads of up to URING_READ go to io_uring
# without trying the page cache first, but for one in every PROBE_EVERY.
MISS_RUN = 8
PROBE_EVERY = 32
# The process's one pool of command buffers, for read data and for write data alike (a
# buffer of one size serves either): what the reads of a while ago left serves the
# writes that follow, instead of new memory.  Enough for 8 commands of 1 MiB in flight.
BUFFERS = BufferPool(keep_per_size=8, max_bytes=16 << 20)


def _whole_bytearray(data: Buffer) -> bytearray | None:
    """The bytearray ``data`` is, or is a complete view of; None otherwise."""
    if type(data) is bytearray:
        return data
    if isinstance(data, memoryview) and type(data.obj) is bytearray \
            and data.nbytes == len(data.obj) and data.c_contiguous:
        return data.obj
    return None


class IOEngine:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        caps = backend.caps
        self.caps = caps
        self.inline = caps.calls is Calls.INLINE
        self._async = caps.calls is Calls.ASYNC
        # Worker threads for blocking calls: enough to keep a queue of 32 commands busy
        # on a device that serves them in parallel, as tgtd's 16 threads per LUN do.
        self._limiter = trio.CapacityLimiter(IO_THREADS)
        access = caps.file
        self.page_cache = PageCacheAccess(access.fileno) \
            if access is not None and access.page_cache else None
        self._fileno = access.fileno if access is not None and access.io_uring else None
        self._ring_wanted = self._fileno is not None  # until io_uring proves unavailable
        self._ring: Uring | None = None
        self.pool = BUFFERS  # read buffers, recycled once sent
        # Chosen once, called per command on the event loop: fill ``into`` now / write
        # now (write-back, no FUA) if that needs no wait; False (nothing done: use
        # ``read`` / ``write``) otherwise.
        self.read_at_once: Callable[[int, bytearray], bool] = self._not_at_once
        self.write_at_once: Callable[[int, memoryview], bool] = self._not_at_once
        if self.inline:
            self.read_at_once, self.write_at_once = self._read_inline, self._write_inline
        elif self.page_cache is not None:
            self.read_at_once = self._read_cached if self._ring_wanted \
                else self.page_cache.read
            self.write_at_once = self.page_cache.write
        self._misses = 0  # page-cache misses in a row
        self._unprobed = 0  # reads sent to io_uring without a try since the last one

    # ------------------------------------------------------------ at once, on the loop

    def _read_inline(self, offset: int, into: bytearray) -> bool:
        try:
            self.backend.read(offset, into)  # type: ignore[attr-defined]
        except OSError:
            return False  # the task path reports it
        return True

    def _read_cached(self, offset: int, into: bytearray) -> bool:
        """The page cache's read, skipped for small reads after a run of misses (they
        go to io_uring, which reads what is cached at once as well)."""
        if self._misses >= MISS_RUN and len(into) <= URING_READ and self._ring_wanted:
            self._unprobed += 1
            if self._unprobed < PROBE_EVERY:
                return False
            self._unprobed = 0
        assert self.page_cache is not None
        if self.page_cache.read(offset, into):
            self._misses = 0
            return True
        self._misses += 1
        return False

    @staticmethod
    def _not_at_once(offset: int, data: Any) -> bool:
        return False

    def range_at_once(self, offset: int, length: int) -> FileRange | None:
        """The range as a file range to send with ``sendfile``, if all of it is in the
        page cache; None otherwise."""
        cache = self.page_cache
        if cache is None or offset + length > self.backend.size \
                or not cache.cached(offset, length):
            return None
        return FileRange(cache, offset, length)

    def _write_inline(self, offset: int, data: memoryview) -> bool:
        try:
            self.backend.write(offset, data)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True

    @property
    def starts_reads(self) -> bool:
        """Whether ``start_read`` may start reads (io_uring is declared and not refused)."""
        return self._ring_wanted

    def start_read(self, offset: int, buf: bytearray,
                   finished: Done) -> bool:
        """Start a read on io_uring; ``finished`` gets the byte count (or the error) on the
        event loop.  False (nothing started) where io_uring is not to be used."""
        ring = self._uring() if len(buf) <= URING_READ else None
        return ring is not None and self._fileno is not None \
            and ring.start_read(self._fileno(), buf, offset, finished)

    # ------------------------------------------------------------ awaited

    async def _call(self, name: str, *args: Any) -> Any:
        fn = getattr(self.backend, name)
        if self.inline:
            return fn(*args)
        with elsewhere():  # a poller must not hold up the end of a thread's work
            if self._async:
                return await fn(*args)
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def read(self, offset: int, into: bytearray) -> None:
        """Fill ``into`` from the backing store; zeros past its end (a file that shrank)."""
        ring = self._uring() if len(into) <= URING_READ else None
        if ring is not None and self._fileno is not None \
                and await ring.read(self._fileno(), into, offset) == len(into):
            return
        # no ring, or a short read (the end of a file that shrank): the backend does it
        await self._call("read", offset, into)

    async def read_new(self, offset: int, length: int) -> bytearray:
        out = bytearray(length)
        await self.read(offset, out)
        return out

    async def write(self, offset: int, data: Buffer, fua: bool = False) -> None:
        ring = self._uring()
        whole = _whole_bytearray(data)
        if ring is not None and whole is not None and self._fileno is not None \
                and await ring.write(self._fileno(), whole, offset) == len(whole):
            if fua:
                await ring.fdatasync(self._fileno())
            return
        # no ring, not a whole buffer, or a short write (rare): the backend writes it all
        if fua and self.caps.can_fua is Fua.NONE:
            await self._call("write", offset, data, False)
            await self.flush()
        else:
            await self._call("write", offset, data, fua)

    async def flush(self) -> None:
        """Make written data durable (a no-op for a backend that cannot flush)."""
        if not self.caps.can_flush:
            return
        ring = self._uring()
        if ring is not None and self._fileno is not None:
            await ring.fdatasync(self._fileno())
        else:
            await self._call("flush")

    async def trim(self, offset: int, length: int) -> None:
        await self._call("trim", offset, length)

    async def zero(self, offset: int, length: int, may_trim: bool) -> None:
        await self._call("zero", offset, length, may_trim)

    async def extents(self, offset: int) -> tuple[bool, int]:
        found: tuple[bool, int] = await self._call("extents", offset)
        return found

    async def cache(self, offset: int, length: int) -> None:
        if self.caps.can_cache:
            await self._call("cache", offset, length)

    # ------------------------------------------------------------ io_uring

    def _uring(self) -> Uring | None:
        """This trio run's io_uring for the backing file, or None."""
        if not self._ring_wanted:
            return None
        ring = self._ring
        if ring is not None and ring.token is trio.lowlevel.current_trio_token():
            return ring
        if ring is not None:  # made in an earlier trio run (tests)
            ring.close()
        self._ring = ring = open_uring()
        self._ring_wanted = ring is not None
        return ring

    def close(self) -> None:
        """Close the ring and the backend."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        self.backend.close()
