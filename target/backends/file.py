"""Type=fileio and Type=blockio: regular files (sparse images) and block devices.

A blocking backend (worker threads) that declares its descriptor, so that the I/O engine
may read and write it from the event loop (page cache, io_uring, sendfile), and its hole
punching and SEEK_DATA as trim and extents.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import struct

from .base import Backend, BackingStoreError, Buffer, Calls, Capabilities, FileAccess, Fua
from .registry import BackendType, Key, Opening, parse_text

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_BLKGETSIZE64 = 0x80081272
_ZERO_CHUNK = bytes(1 << 20)
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate a range (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)."""
    if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class FileBackend:
    def __init__(self, path: str, *, read_only: bool = False, create_size: int | None = None):
        self.path = path
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
        self.block_size = 512
        punch = not read_only and self._probe_punch()
        regular = not self.is_block_device
        self.caps = Capabilities(
            calls=Calls.BLOCKING, can_write=not read_only, can_flush=not read_only,
            can_fua=Fua.EMULATE if not read_only else Fua.NONE,
            can_trim=punch, trim_zeroes=punch, can_zero=punch, can_extents=True,
            file=FileAccess(self.fileno, page_cache=regular and hasattr(os, "RWF_NOWAIT"),
                            io_uring=True, punch_hole=punch, seek_data=regular))
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

    def fileno(self) -> int:
        """The backing file's descriptor; -1 once closed (a send from it then fails)."""
        return self.fd

    def read(self, offset: int, into: bytearray) -> None:
        view = memoryview(into)
        done = 0
        while done < len(view):
            n = os.preadv(self.fd, [view[done:]], offset + done)
            if n == 0:  # past EOF of a file that shrank: zeros
                view[done:] = bytes(len(view) - done)
                break
            done += n

    def write(self, offset: int, data: Buffer, fua: bool = False) -> None:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwritev(self.fd, [view[done:]], offset + done)
        if fua:
            os.fdatasync(self.fd)

    def flush(self) -> None:
        os.fdatasync(self.fd)

    def trim(self, offset: int, length: int) -> None:
        punch_hole(self.fd, offset, length)

    def zero(self, offset: int, length: int, may_trim: bool) -> None:
        if may_trim:
            punch_hole(self.fd, offset, length)
            return
        done = 0
        while done < length:
            n = min(len(_ZERO_CHUNK), length - done)
            self.write(offset + done, memoryview(_ZERO_CHUNK)[:n])
            done += n

    def extents(self, offset: int) -> tuple[bool, int]:
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


def _open(opening: Opening) -> Backend:
    return FileBackend(opening.options["path"], read_only=opening.read_only,
                       create_size=opening.options.get("create_size"))  # --disk --size


_PATH = Key("Path", parse_text, required=True, meaning="the file or block device")
TYPES = (
    BackendType("fileio", "a regular file (sparse images work best) or a block device",
                (_PATH,), _open),
    BackendType("blockio", "the same as fileio (IET served block devices with it)",
                (_PATH,), _open),
)
