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
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

Buffer = bytes | bytearray | memoryview

ROOT_ID = 1
MIN_READ_BUFFER = 8192  # the smallest read the kernel accepts on /dev/fuse
NAME_MAX = 1024


class Opcode(IntEnum):
    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51
    STATX = 52


class Notify(IntEnum):
    POLL = 1
    INVAL_INODE = 2
    INVAL_ENTRY = 3
    STORE = 4
    RETRIEVE = 5
    DELETE = 6


# fuse_open_out.open_flags
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6  # protocol 7.36

# fuse_setattr_in.valid
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_FH = 1 << 6

FSYNC_FDATASYNC = 1 << 0
GETATTR_FH = 1 << 0

# fallocate(2) modes (linux/falloc.h) and lseek(2) whence values
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
SEEK_DATA = 3
SEEK_HOLE = 4

# d_type values of a dirent
DT_DIR = 4
DT_REG = 8

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
ENTRY_OUT = struct.Struct("<QQQQII" + ATTR.format[1:])
ATTR_OUT = struct.Struct("<QII" + ATTR.format[1:])
GETATTR_IN = struct.Struct("<IIQ")
SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")
OPEN_IN = struct.Struct("<II")
OPEN_OUT = struct.Struct("<QII")
RELEASE_IN = struct.Struct("<QIIQ")
FLUSH_IN = struct.Struct("<QIIQ")
READ_IN = struct.Struct("<QQIIQII")
WRITE_IN = struct.Struct("<QQIIQII")
WRITE_OUT = struct.Struct("<II")
FSYNC_IN = struct.Struct("<QII")
FORGET_IN = struct.Struct("<Q")
BATCH_FORGET_IN = struct.Struct("<II")
FORGET_ONE = struct.Struct("<QQ")
INTERRUPT_IN = struct.Struct("<Q")
FALLOCATE_IN = struct.Struct("<QQQII")
LSEEK_IN = struct.Struct("<QQII")
LSEEK_OUT = struct.Struct("<Q")
KSTATFS = struct.Struct("<QQQQQIIII24x")
DIRENT = struct.Struct("<QQII")
INVAL_INODE_OUT = struct.Struct("<Qqq")
INVAL_ENTRY_OUT = struct.Struct("<QII")
INIT_IN_COMPAT = struct.Struct("<IIII")  # before 7.36
INIT_IN_FLAGS2 = struct.Struct("<I")


class Malformed(Exception):
    """A request that cannot be decoded: answer ``errno`` to ``unique`` (None when not
    even the header could be read, so there is nobody to answer)."""

    def __init__(self, reason: str, unique: int | None, err: int = errno.EINVAL) -> None:
        super().__init__(reason)
        self.unique = unique
        self.errno = err


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class Init:
    major: int
    minor: int
    max_readahead: int
    flags: int  # flags | flags2 << 32


@dataclass(frozen=True, slots=True)
class Destroy:
    pass


@dataclass(frozen=True, slots=True)
class Lookup:
    name: bytes


@dataclass(frozen=True, slots=True)
class Forget:
    items: tuple[tuple[int, int], ...]  # (nodeid, nlookup); BATCH_FORGET has many


@dataclass(frozen=True, slots=True)
class GetAttr:
    fh: int | None


@dataclass(frozen=True, slots=True)
class SetAttr:
    valid: int
    fh: int | None
    size: int | None
    mode: int | None


@dataclass(frozen=True, slots=True)
class Open:
    flags: int
    directory: bool


@dataclass(frozen=True, slots=True)
class Release:
    fh: int
    directory: bool


@dataclass(frozen=True, slots=True)
class ReadDir:
    fh: int
    offset: int
    size: int
    plus: bool


@dataclass(frozen=True, slots=True)
class Read:
    fh: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Write:
    fh: int
    offset: int
    data: memoryview  # a view of the buffer the request was read into


@dataclass(frozen=True, slots=True)
class Flush:
    fh: int


@dataclass(frozen=True, slots=True)
class Fsync:
    fh: int
    datasync: bool


@dataclass(frozen=True, slots=True)
class Fallocate:
    fh: int
    offset: int
    length: int
    mode: int


@dataclass(frozen=True, slots=True)
class Lseek:
    fh: int
    offset: int
    whence: int


@dataclass(frozen=True, slots=True)
class StatFs:
    pass


@dataclass(frozen=True, slots=True)
class Interrupt:
    unique: int  # of the request to interrupt


@dataclass(frozen=True, slots=True)
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
    fh, offset, size, *_ = _args(READ_IN, b, h)
    return Read(fh, offset, size)


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


# ----------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class Attr:
    """What ``stat`` shows of a node; times in nanoseconds."""

    ino: int
    mode: int
    size: int = 0
    blocks: int = 0
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    blksize: int = 4096
    time_ns: int = 0
    rdev: int = 0


def _seconds(t: float) -> tuple[int, int]:
    whole = int(t)
    return whole, int((t - whole) * 1e9)


def _attr_fields(a: Attr) -> tuple[int, ...]:
    s, ns = divmod(a.time_ns, 1_000_000_000)
    return (a.ino, a.size, a.blocks, s, s, s, ns, ns, ns, a.mode, a.nlink, a.uid, a.gid,
            a.rdev, a.blksize, 0)


def reply(unique: int, *payload: Buffer) -> list[Buffer]:
    """A successful reply: the header, then the payload buffers as they are."""
    length = OUT_HEADER.size + sum(memoryview(p).nbytes for p in payload)
    return [OUT_HEADER.pack(length, 0, unique), *payload]


def error(unique: int, err: int) -> list[Buffer]:
    """An error reply (``err`` is a positive errno value)."""
    return [OUT_HEADER.pack(OUT_HEADER.size, -err, unique)]


def entry_out(a: Attr, entry_valid: float, attr_valid: float, generation: int = 0) -> bytes:
    es, ens = _seconds(entry_valid)
    as_, ans = _seconds(attr_valid)
    return ENTRY_OUT.pack(a.ino, generation, es, as_, ens, ans, *_attr_fields(a))


def attr_out(a: Attr, attr_valid: float) -> bytes:
    s, ns = _seconds(attr_valid)
    return ATTR_OUT.pack(s, ns, 0, *_attr_fields(a))


def open_out(fh: int, flags: int) -> bytes:
    return OPEN_OUT.pack(fh, flags, 0)


def write_out(size: int) -> bytes:
    return WRITE_OUT.pack(size, 0)


def lseek_out(offset: int) -> bytes:
    return LSEEK_OUT.pack(offset)


@dataclass(frozen=True, slots=True)
class FsStat:
    blocks: int
    bsize: int
    files: int
    bfree: int = 0
    bavail: int = 0
    ffree: int = 0
    namelen: int = 255


def statfs_out(s: FsStat) -> bytes:
    return KSTATFS.pack(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen,
                        s.bsize, 0)


def _dtype(mode: int) -> int:
    return DT_DIR if mode & 0o170000 == 0o040000 else DT_REG


def dirents(entries: list[tuple[bytes, Attr, int]], size: int, plus: bool,
            valid: float = 60.0) -> bytes:
    """``fuse_dirent`` (or ``fuse_direntplus``) records of (name, attributes, offset of
    the next entry), as many whole ones as fit in ``size`` bytes."""
    out = bytearray()
    for name, a, next_offset in entries:
        head = DIRENT.pack(a.ino, next_offset, len(name), _dtype(a.mode))
        record = head + name + bytes(-(DIRENT.size + len(name)) % 8)
        if plus:
            record = entry_out(a, valid, valid) + record
        if len(out) + len(record) > size:
            break
        out += record
    return bytes(out)


def notify_inval_inode(ino: int, offset: int = 0, length: int = 0) -> list[Buffer]:
    """Forget the attributes of ``ino`` and its cached data from ``offset`` for
    ``length`` bytes (0: to the end; a negative offset: the attributes only)."""
    body = INVAL_INODE_OUT.pack(ino, offset, length)
    return [OUT_HEADER.pack(OUT_HEADER.size + len(body), Notify.INVAL_INODE, 0), body]


def notify_inval_entry(parent: int, name: bytes) -> list[Buffer]:
    """Forget the directory entry ``name`` of ``parent`` (and so its lookup)."""
    body = INVAL_ENTRY_OUT.pack(parent, len(name), 0) + name + b"\0"
    return [OUT_HEADER.pack(OUT_HEADER.size + len(body), Notify.INVAL_ENTRY, 0), body]
