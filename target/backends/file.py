"""Regular files (sparse images) and block devices as LUN storage."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import struct
import time

from blockbridge.iscsi.framing import FileRange

from .. import pagecache

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_BLKGETSIZE64 = 0x80081272
_SLOW_INLINE_WRITE = 0.002  # seconds: an inline write slower than this ...
_INLINE_WRITE_PAUSE = 5.0  # ... sends writes to threads for this long
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate a range (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)."""
    if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class BackingStoreError(Exception):
    """A LUN's backing file cannot be used; the message says why and what to do."""


class FileBackend:
    def __init__(self, path: str, *, read_only: bool = False, create_size: int | None = None):
        self.path = path
        self.read_only = read_only
        flags = os.O_RDONLY if read_only else os.O_RDWR
        if create_size is not None and not os.path.exists(path):
            flags |= os.O_CREAT
        try:
            self.fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise BackingStoreError(f"backing file {path} does not exist") from None
        except PermissionError:
            raise BackingStoreError(f"no permission to open {path}") from None
        except IsADirectoryError:
            raise BackingStoreError(f"{path} is a directory, not a file or device") from None
        st = os.fstat(self.fd)
        self.is_block_device = stat.S_ISBLK(st.st_mode)
        if self.is_block_device:
            buf = fcntl.ioctl(self.fd, _BLKGETSIZE64, b"\0" * 8)
            self.size = struct.unpack("Q", buf)[0]
        else:
            if create_size is not None and st.st_size == 0:
                os.ftruncate(self.fd, create_size)
            self.size = os.fstat(self.fd).st_size
        if self.size == 0:
            os.close(self.fd)
            raise BackingStoreError(f"backing file {path} is empty (size 0)")
        self.can_unmap = not read_only and self._probe_punch()
        self._nowait = hasattr(os, "RWF_NOWAIT") and not self.is_block_device
        self._inline_writes_after = 0.0
        kind = "block device" if self.is_block_device else "file"
        self.description = f"{kind} {path}"

    def _probe_punch(self) -> bool:
        if self.is_block_device:
            return True
        try:
            # Punching a zero-length range is rejected; a 0-byte probe at EOF is harmless.
            punch_hole(self.fd, self.size, 4096)
            return True
        except OSError as exc:
            return exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS)

    def read(self, offset: int, length: int) -> bytearray:
        out = bytearray(length)
        self.read_into(offset, out)
        return out

    def read_into(self, offset: int, into: bytearray) -> None:
        view = memoryview(into)
        done = 0
        while done < len(view):
            n = os.preadv(self.fd, [view[done:]], offset + done)
            if n == 0:  # past EOF of a file that shrank: zeros
                view[done:] = bytes(len(view) - done)
                break
            done += n

    def read_cached(self, offset: int, into: bytearray) -> bool:
        # RWF_NOWAIT: the kernel copies from the page cache or says EAGAIN; about a
        # microsecond on a hit, against tens of microseconds for a hop to a thread.
        if not self._nowait:
            return False
        try:
            n = os.preadv(self.fd, [into], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                self._nowait = False  # file system without RWF_NOWAIT reads
            return False
        return n == len(into)

    def fileno(self) -> int:
        """The backing file's descriptor; -1 once closed (a send from it then fails)."""
        return self.fd

    def cached_range(self, offset: int, length: int) -> FileRange | None:
        # Regular files only: the same ones that read with RWF_NOWAIT.
        if not self._nowait or offset + length > self.size \
                or not pagecache.cached(self.fd, offset, length):
            return None
        return FileRange(self, offset, length)

    def write(self, offset: int, data: bytes | bytearray | memoryview, sync: bool = False) -> None:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwritev(self.fd, [view[done:]], offset + done)
        if sync:
            os.fdatasync(self.fd)

    def write_cached(self, offset: int, data: memoryview) -> bool:
        # Whole pages of a regular file: the kernel copies them into the page cache
        # without reading anything first, usually in microseconds (a hop to a thread
        # costs 60-140 us here).  A write that still takes long (dirty-page throttling,
        # a journal commit) sends the next ones to threads for a while, so the event loop
        # is never held up twice in a row.
        if self.is_block_device or offset % 4096 or data.nbytes % 4096:
            return False
        now = time.monotonic()
        if now < self._inline_writes_after:
            return False
        done = 0
        try:
            while done < data.nbytes:
                done += os.pwritev(self.fd, [data[done:]], offset + done)
        except OSError:
            return False  # the write is done again the slow way, which reports the error
        if time.monotonic() - now > _SLOW_INLINE_WRITE:
            self._inline_writes_after = time.monotonic() + _INLINE_WRITE_PAUSE
        return True

    def flush(self) -> None:
        if not self.read_only:
            os.fdatasync(self.fd)

    def unmap(self, offset: int, length: int) -> None:
        punch_hole(self.fd, offset, length)

    def mapped_extent(self, offset: int) -> tuple[bool, int]:
        if self.is_block_device:
            return True, self.size - offset
        try:
            data = os.lseek(self.fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole up to EOF
                return False, self.size - offset
            return True, self.size - offset
        if data > offset:
            return False, min(data, self.size) - offset
        hole = os.lseek(self.fd, offset, os.SEEK_HOLE)
        return True, min(hole, self.size) - offset

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        with contextlib.suppress(OSError):
            os.close(fd)


class NullBackend:
    """Type=nullio: writes are discarded, reads return zeros; for benchmarks."""

    read_only = False
    can_unmap = True

    def __init__(self, size: int) -> None:
        self.size = size
        self.description = f"nullio {size} bytes"

    def read(self, offset: int, length: int) -> bytearray:
        return bytearray(length)

    def read_into(self, offset: int, into: bytearray) -> None:
        into[:] = bytes(len(into))

    def read_cached(self, offset: int, into: bytearray) -> bool:
        into[:] = bytes(len(into))
        return True

    def cached_range(self, offset: int, length: int) -> FileRange | None:
        return None

    def write(self, offset: int, data: bytes | bytearray | memoryview, sync: bool = False) -> None:
        return None

    def write_cached(self, offset: int, data: memoryview) -> bool:
        return True

    def flush(self) -> None:
        return None

    def unmap(self, offset: int, length: int) -> None:
        return None

    def mapped_extent(self, offset: int) -> tuple[bool, int]:
        return False, self.size - offset

    def close(self) -> None:
        return None
