"""The kernel's FUSE wire protocol (``include/uapi/linux/fuse.h``), without I/O.

A request is a ``fuse_in_header`` (40 bytes) and an opcode's argument struct; a reply is a
``fuse_out_header`` (16 bytes) and the opcode's result.  ``parse_header`` and ``decode``
turn the bytes the kernel wrote into a header and a typed request; the ``*_out`` functions
and ``reply`` turn results back into the buffers of one ``writev``.  Notifications
(``FUSE_NOTIFY_INVAL_INODE``, ``FUSE_NOTIFY_INVAL_ENTRY``) are replies with unique 0 and
the notification code in the error field.  INIT negotiation is in ``negotiation.py``.

Malformed input raises ``Malformed``, which carries the errno to answer with (and the
request's unique, when the header could be read).  An opcode this module does not know is
not an error here: it decodes to ``Unknown``, which the shell answers with ENOSYS.

Requests are values, never changed once decoded; like the iSCSI PDUs they are not
declared frozen, which would make each of them about five times as costly to build.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass

from .replies import (  # re-exported: one namespace for the shells
    Attr,
    FsStat,
    attr_out,
    dirents,
    entry_out,
    error,
    lseek_out,
    notify_inval_entry,
    notify_inval_inode,
    open_out,
    reply,
    reply_data,
    statfs_out,
    write_out,
)
from .structs import (  # re-exported
    ATTR,
    ATTR_OUT,
    BATCH_FORGET_IN,
    DIRENT,
    DT_DIR,
    DT_REG,
    ENTRY_OUT,
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    FALLOCATE_IN,
    FATTR_FH,
    FATTR_GID,
    FATTR_MODE,
    FATTR_SIZE,
    FATTR_UID,
    FLUSH_IN,
    FOPEN_DIRECT_IO,
    FOPEN_KEEP_CACHE,
    FOPEN_PARALLEL_DIRECT_WRITES,
    FORGET_IN,
    FORGET_ONE,
    FSYNC_FDATASYNC,
    FSYNC_IN,
    GETATTR_FH,
    GETATTR_IN,
    IN_HEADER,
    INIT_IN_COMPAT,
    INIT_IN_FLAGS2,
    INTERRUPT_IN,
    INVAL_ENTRY_OUT,
    INVAL_INODE_OUT,
    KSTATFS,
    LSEEK_IN,
    LSEEK_OUT,
    MIN_READ_BUFFER,
    NAME_MAX,
    OPEN_IN,
    OPEN_OUT,
    OUT_HEADER,
    READ_IN,
    RELEASE_IN,
    ROOT_ID,
    SEEK_DATA,
    SEEK_HOLE,
    SETATTR_IN,
    WRITE_IN,
    WRITE_OUT,
    Buffer,
    Notify,
    Opcode,
)

__all__ = [
    "ATTR",
    "ATTR_OUT",
    "BATCH_FORGET_IN",
    "DIRENT",
    "DT_DIR",
    "DT_REG",
    "ENTRY_OUT",
    "FALLOCATE_IN",
    "FALLOC_FL_KEEP_SIZE",
    "FALLOC_FL_PUNCH_HOLE",
    "FALLOC_FL_ZERO_RANGE",
    "FATTR_FH",
    "FATTR_GID",
    "FATTR_MODE",
    "FATTR_SIZE",
    "FATTR_UID",
    "FLUSH_IN",
    "FOPEN_DIRECT_IO",
    "FOPEN_KEEP_CACHE",
    "FOPEN_PARALLEL_DIRECT_WRITES",
    "FORGET_IN",
    "FORGET_ONE",
    "FSYNC_FDATASYNC",
    "FSYNC_IN",
    "GETATTR_FH",
    "GETATTR_IN",
    "INIT_IN_COMPAT",
    "INIT_IN_FLAGS2",
    "INTERRUPT_IN",
    "INVAL_ENTRY_OUT",
    "INVAL_INODE_OUT",
    "IN_HEADER",
    "KSTATFS",
    "LSEEK_IN",
    "LSEEK_OUT",
    "MIN_READ_BUFFER",
    "NAME_MAX",
    "OPEN_IN",
    "OPEN_OUT",
    "OUT_HEADER",
    "READ_IN",
    "RELEASE_IN",
    "ROOT_ID",
    "SEEK_DATA",
    "SEEK_HOLE",
    "SETATTR_IN",
    "WRITE_IN",
    "WRITE_OUT",
    "Attr",
    "Buffer",
    "Destroy",
    "Fallocate",
    "Flush",
    "Forget",
    "FsStat",
    "Fsync",
    "GetAttr",
    "Header",
    "Init",
    "Interrupt",
    "Lookup",
    "Lseek",
    "Malformed",
    "Notify",
    "Opcode",
    "Open",
    "Read",
    "ReadDir",
    "Release",
    "Request",
    "SetAttr",
    "StatFs",
    "Unknown",
    "Write",
    "attr_out",
    "decode",
    "dirents",
    "entry_out",
    "error",
    "lseek_out",
    "notify_inval_entry",
    "notify_inval_inode",
    "open_out",
    "parse_header",
    "reply",
    "reply_data",
    "statfs_out",
    "write_out",
]

class Malformed(Exception):
    """A request that cannot be decoded: answer ``errno`` to ``unique`` (None when not
    even the header could be read, so there is nobody to answer)."""

    def __init__(self, reason: str, unique: int | None, err: int = errno.EINVAL) -> None:
        super().__init__(reason)
        self.unique = unique
        self.errno = err


@dataclass(slots=True)
class Header:
    length: int
    opcode: int
    unique: int
    nodeid: int
    uid: int
    gid: int
    pid: int


def parse_header(buf: memoryview, n: int) -> tuple[Header, memoryview]:
    """The header of the ``n`` bytes read into ``buf``, and a view of the argument that
    follows it (without the request extensions)."""
    if n < IN_HEADER.size:
        unique = int.from_bytes(buf[8:16], "little") if n >= 16 else None
        raise Malformed(f"request of {n} bytes is shorter than its header", unique, errno.EIO)
    length, opcode, unique, nodeid, uid, gid, pid, extlen, _ = IN_HEADER.unpack_from(buf)
    if length != n:
        raise Malformed(f"request says {length} bytes, {n} were read", unique, errno.EIO)
    end = n - 8 * extlen
    if end < IN_HEADER.size:
        raise Malformed("request extensions longer than the request", unique, errno.EIO)
    return Header(length, opcode, unique, nodeid, uid, gid, pid), buf[IN_HEADER.size : end]


# ----------------------------------------------------------------------------- requests


@dataclass(slots=True)
class Init:
    major: int
    minor: int
    max_readahead: int
    flags: int  # flags | flags2 << 32


@dataclass(slots=True)
class Destroy:
    pass


@dataclass(slots=True)
class Lookup:
    name: bytes


@dataclass(slots=True)
class Forget:
    items: tuple[tuple[int, int], ...]  # (nodeid, nlookup); BATCH_FORGET has many


@dataclass(slots=True)
class GetAttr:
    fh: int | None


@dataclass(slots=True)
class SetAttr:
    valid: int
    fh: int | None
    size: int | None
    mode: int | None


@dataclass(slots=True)
class Open:
    flags: int
    directory: bool


@dataclass(slots=True)
class Release:
    fh: int
    directory: bool


@dataclass(slots=True)
class ReadDir:
    fh: int
    offset: int
    size: int
    plus: bool


@dataclass(slots=True)
class Read:
    fh: int
    offset: int
    size: int
    flags: int = 0  # the open flags of the file read (O_DIRECT, ...)


@dataclass(slots=True)
class Write:
    fh: int
    offset: int
    data: memoryview  # a view of the buffer the request was read into


@dataclass(slots=True)
class Flush:
    fh: int


@dataclass(slots=True)
class Fsync:
    fh: int
    datasync: bool


@dataclass(slots=True)
class Fallocate:
    fh: int
    offset: int
    length: int
    mode: int


@dataclass(slots=True)
class Lseek:
    fh: int
    offset: int
    whence: int


@dataclass(slots=True)
class StatFs:
    pass


@dataclass(slots=True)
class Interrupt:
    unique: int  # of the request to interrupt


@dataclass(slots=True)
class Unknown:
    opcode: int


Request = (Init | Destroy | Lookup | Forget | GetAttr | SetAttr | Open | Release | ReadDir
           | Read | Write | Flush | Fsync | Fallocate | Lseek | StatFs | Interrupt | Unknown)


_Decoder = Callable[[memoryview, Header], Request]


def _args(s: struct.Struct, body: memoryview, h: Header) -> tuple[int, ...]:
    if len(body) < s.size:
        name = _name(h.opcode)
        raise Malformed(f"{name} argument of {len(body)} bytes, {s.size} expected", h.unique)
    return s.unpack_from(body)


def _name(opcode: int) -> str:
    try:
        return Opcode(opcode).name
    except ValueError:
        return f"opcode {opcode}"


def _cstring(body: memoryview, h: Header) -> bytes:
    raw = bytes(body[: NAME_MAX + 1])
    end = raw.find(b"\0")
    if end < 0:
        raise Malformed(f"{_name(h.opcode)} name is not NUL-terminated", h.unique)
    return raw[:end]


def _init(b: memoryview, h: Header) -> Init:
    major, minor, ra, flags = _args(INIT_IN_COMPAT, b, h)
    if major == 7 and minor >= 36 and len(b) >= INIT_IN_COMPAT.size + 4:
        flags |= INIT_IN_FLAGS2.unpack_from(b, INIT_IN_COMPAT.size)[0] << 32
    return Init(major, minor, ra, flags)


def _forget(b: memoryview, h: Header) -> Forget:
    return Forget(((h.nodeid, _args(FORGET_IN, b, h)[0]),))


def _batch_forget(b: memoryview, h: Header) -> Forget:
    count = _args(BATCH_FORGET_IN, b, h)[0]
    need = BATCH_FORGET_IN.size + count * FORGET_ONE.size
    if len(b) < need:
        raise Malformed(f"BATCH_FORGET of {count} in {len(b)} bytes", h.unique)
    return Forget(tuple(FORGET_ONE.iter_unpack(b[BATCH_FORGET_IN.size : need])))


def _getattr(b: memoryview, h: Header) -> GetAttr:
    flags, _, fh = _args(GETATTR_IN, b, h)
    return GetAttr(fh if flags & GETATTR_FH else None)


def _setattr(b: memoryview, h: Header) -> SetAttr:
    fields = _args(SETATTR_IN, b, h)
    valid, fh, size, mode = fields[0], fields[2], fields[3], fields[11]
    return SetAttr(valid, fh if valid & FATTR_FH else None,
                   size if valid & FATTR_SIZE else None, mode if valid & FATTR_MODE else None)


def _read(b: memoryview, h: Header) -> Read:
    fh, offset, size, _read_flags, _lock_owner, flags, _ = _args(READ_IN, b, h)
    return Read(fh, offset, size, flags)


def _write(b: memoryview, h: Header) -> Write:
    fh, offset, size, *_ = _args(WRITE_IN, b, h)
    data = b[WRITE_IN.size :]
    if len(data) != size:
        raise Malformed(f"WRITE of {size} bytes carries {len(data)}", h.unique)
    return Write(fh, offset, data)


def _readdir(plus: bool) -> _Decoder:
    def decode(b: memoryview, h: Header) -> ReadDir:
        fh, offset, size, *_ = _args(READ_IN, b, h)
        return ReadDir(fh, offset, size, plus)
    return decode


def _open(directory: bool) -> _Decoder:
    def decode(b: memoryview, h: Header) -> Open:
        return Open(_args(OPEN_IN, b, h)[0], directory)
    return decode


def _release(directory: bool) -> _Decoder:
    def decode(b: memoryview, h: Header) -> Release:
        return Release(_args(RELEASE_IN, b, h)[0], directory)
    return decode


def _fsync(b: memoryview, h: Header) -> Fsync:
    fh, flags, _ = _args(FSYNC_IN, b, h)
    return Fsync(fh, bool(flags & FSYNC_FDATASYNC))


def _fallocate(b: memoryview, h: Header) -> Fallocate:
    fh, offset, length, mode, _ = _args(FALLOCATE_IN, b, h)
    return Fallocate(fh, offset, length, mode)


def _lseek(b: memoryview, h: Header) -> Lseek:
    fh, offset, whence, _ = _args(LSEEK_IN, b, h)
    return Lseek(fh, offset, whence)


DECODERS: dict[int, _Decoder] = {
    Opcode.INIT: _init,
    Opcode.DESTROY: lambda b, h: Destroy(),
    Opcode.LOOKUP: lambda b, h: Lookup(_cstring(b, h)),
    Opcode.FORGET: _forget,
    Opcode.BATCH_FORGET: _batch_forget,
    Opcode.GETATTR: _getattr,
    Opcode.SETATTR: _setattr,
    Opcode.OPEN: _open(False),
    Opcode.OPENDIR: _open(True),
    Opcode.RELEASE: _release(False),
    Opcode.RELEASEDIR: _release(True),
    Opcode.READDIR: _readdir(False),
    Opcode.READDIRPLUS: _readdir(True),
    Opcode.READ: _read,
    Opcode.WRITE: _write,
    Opcode.FLUSH: lambda b, h: Flush(_args(FLUSH_IN, b, h)[0]),
    Opcode.FSYNC: _fsync,
    Opcode.FALLOCATE: _fallocate,
    Opcode.LSEEK: _lseek,
    Opcode.STATFS: lambda b, h: StatFs(),
    Opcode.INTERRUPT: lambda b, h: Interrupt(_args(INTERRUPT_IN, b, h)[0]),
}


def decode(h: Header, body: memoryview) -> Request:
    """The typed request; ``Unknown`` for an opcode without a decoder here."""
    decoder = DECODERS.get(h.opcode)
    if decoder is None:
        return Unknown(h.opcode)
    return decoder(body, h)
