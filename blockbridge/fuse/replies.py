"""Replies to the kernel's FUSE requests, and notifications, as the buffers of one
``writev``: a ``fuse_out_header`` and the opcode's result struct (from
``include/uapi/linux/fuse.h``), the data as it is.  No I/O."""

from __future__ import annotations

from dataclasses import dataclass

from .structs import (
    ATTR_OUT,
    DIRENT,
    DT_DIR,
    DT_REG,
    ENTRY_OUT,
    INVAL_ENTRY_OUT,
    INVAL_INODE_OUT,
    KSTATFS,
    LSEEK_OUT,
    OPEN_OUT,
    OUT_HEADER,
    WRITE_OUT,
    Buffer,
    Notify,
)


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


def reply_data(unique: int, data: memoryview) -> list[Buffer]:
    """A successful reply carrying ``data`` (a READ's): ``reply`` for the hot path."""
    return [OUT_HEADER.pack(OUT_HEADER.size + data.nbytes, 0, unique), data]


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
