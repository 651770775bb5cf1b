"""The page cache of a backing file, used from the event loop without waiting.

:class:`PageCacheAccess` reads with ``RWF_NOWAIT`` (about a microsecond on a hit, against
tens of microseconds for a hop to a thread), writes whole pages straight into the cache,
and tells whether a range is cached so that it can be sent with ``sendfile``.  The I/O
engine uses it for backends that declare ``FileAccess(page_cache=True)``.

Whether a range of a file is in the page cache is asked without reading it.

The ``cachestat`` system call (Linux 6.5) counts the cached pages of a range in about a
microsecond.  The target asks it before it sends a read's data with ``sendfile``, which
would block the event loop on a page it has to read from the disk.  Where the call is
missing (older kernels, seccomp filters, an architecture whose number is not known
here), ``cached`` answers False and reads take their usual way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import platform
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# Since Linux 5.1 new system calls share one number on most architectures.
_CACHESTAT = 451 if platform.machine() in {
    "x86_64", "aarch64", "arm64", "riscv64", "ppc64le", "ppc64", "s390x", "loongarch64",
} else None
PAGE = os.sysconf("SC_PAGE_SIZE")


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
available = _CACHESTAT is not None


def resident(fd: int, offset: int, length: int) -> int | None:
    """How many pages of ``length`` bytes from ``offset`` are in the page cache; None
    where the kernel does not say (no cachestat)."""
    global available
    if not available or length <= 0:
        return None
    rng, st = _Range(offset, length), _Stat()
    if _syscall(_CACHESTAT, fd, ctypes.byref(rng), ctypes.byref(st), 0) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
            available = False
            log.info("the kernel does not answer cachestat (%s): reads are copied "
                     "from the page cache, not sent from it", os.strerror(err))
        return None
    return int(st.nr_cache)


def cached(fd: int, offset: int, length: int) -> bool:
    """True if every page of ``length`` bytes from ``offset`` is in the page cache."""
    pages = resident(fd, offset, length)
    if pages is None:
        return False
    return pages >= (offset + length + PAGE - 1) // PAGE - offset // PAGE


_SLOW_INLINE_WRITE = 0.002  # seconds: an inline write slower than this is slow ...
_SLOW_WRITES = 3  # ... and this many slow ones within ...
_SLOW_WINDOW = 1.0  # ... this many seconds (or one write this slow: ...
_STALLED_WRITE = 0.02  # ... the disk is throttling) ...
_INLINE_WRITE_PAUSE = 1.0  # ... send writes to threads for this long, twice as long ...
_MAX_PAUSE = 30.0  # ... each time it comes again within 10 pauses, up to this


class PageCacheAccess:
    """Reads and writes of one descriptor that never wait for the disk."""

    def __init__(self, fileno: Callable[[], int]) -> None:
        self._fileno = fileno
        self._nowait = hasattr(os, "RWF_NOWAIT")
        self._inline_writes_after = 0.0
        self._slow_writes: list[float] = []  # when the recent slow inline writes ended
        self._pause = _INLINE_WRITE_PAUSE

    def fileno(self) -> int:
        """The descriptor (-1 once closed): what a FileRange asks for when it is sent."""
        return self._fileno()

    def read(self, offset: int, into: bytearray) -> bool:
        """Fill ``into`` from ``offset`` if all of it is in the page cache; else False."""
        if not self._nowait:
            return False
        try:
            n = os.preadv(self._fileno(), [into], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                self._nowait = False  # file system without RWF_NOWAIT reads
            return False
        return n == len(into)

    def cached(self, offset: int, length: int) -> bool:
        """Whether all of the range is in the page cache (so ``sendfile`` will not wait)."""
        return self._nowait and cached(self.fileno(), offset, length)

    def write(self, offset: int, data: memoryview) -> bool:
        """Write whole pages into the page cache; False (nothing written) if the caller
        should use a worker thread instead.

        The kernel copies whole pages in without reading anything first, usually in
        microseconds.  Writes that keep taking long (three slower than 2 ms within a
        second, or one slower than 20 ms: dirty-page throttling, journal commits) send
        the next ones to threads for a second, twice as long each time it comes again
        soon, so the event loop is not held up again and again.  One write of a few
        milliseconds alone does not: on a shared machine the process is often paused
        that long, and the thread path costs several times the inline one."""
        if offset % 4096 or data.nbytes % 4096:
            return False
        now = time.monotonic()
        if now < self._inline_writes_after:
            return False
        fd = self._fileno()
        done = 0
        try:
            while done < data.nbytes:
                done += os.pwritev(fd, [data[done:]], offset + done)
        except OSError:
            return False  # the write is done again the slow way, which reports the error
        end = time.monotonic()
        if end - now > _SLOW_INLINE_WRITE:
            self._slow_write(end, end - now)
        return True

    def _slow_write(self, end: float, took: float) -> None:
        slow = self._slow_writes
        slow.append(end)
        while slow[0] < end - _SLOW_WINDOW:
            del slow[0]
        if len(slow) < _SLOW_WRITES and took < _STALLED_WRITE:
            return
        slow.clear()
        again = end < self._inline_writes_after + 10 * self._pause
        self._pause = min(2 * self._pause, _MAX_PAUSE) if again else _INLINE_WRITE_PAUSE
        self._inline_writes_after = end + self._pause
