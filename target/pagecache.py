"""Whether a range of a file is in the page cache, asked without reading it.

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


def cached(fd: int, offset: int, length: int) -> bool:
    """True if every page of ``length`` bytes from ``offset`` is in the page cache."""
    global available
    if not available or length <= 0:
        return False
    rng, st = _Range(offset, length), _Stat()
    if _syscall(_CACHESTAT, fd, ctypes.byref(rng), ctypes.byref(st), 0) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
            available = False
            log.info("the kernel does not answer cachestat (%s): reads are copied "
                     "from the page cache, not sent from it", os.strerror(err))
        return False
    pages = (offset + length + PAGE - 1) // PAGE - offset // PAGE
    return bool(st.nr_cache >= pages)
