"""The FUSE codec against bytes built by hand from the struct layouts of
include/uapi/linux/fuse.h, round trips, and malformed input."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blockbridge.fuse import protocol as P
from blockbridge.fuse.negotiation import (
    ASYNC_DIO,
    ASYNC_READ,
    BIG_WRITES,
    MAX_PAGES,
    Limits,
    Unsupported,
    negotiate,
)


def le(*fields: tuple[int, int]) -> bytes:
    """Little-endian fields given as (value, width in bytes)."""
    return b"".join(v.to_bytes(w, "little", signed=v < 0) for v, w in fields)


def request(opcode: int, body: bytes, unique: int = 7, nodeid: int = 1) -> bytearray:
    header = le((40 + len(body), 4), (opcode, 4), (unique, 8), (nodeid, 8), (1000, 4),
                (1000, 4), (4242, 4), (0, 2), (0, 2))
    return bytearray(header + body)


def parse(raw: bytearray) -> tuple[P.Header, P.Request]:
    header, body = P.parse_header(memoryview(raw), len(raw))
    return header, P.decode(header, body)


def test_struct_sizes_are_those_of_fuse_h() -> None:
    sizes = {P.IN_HEADER: 40, P.OUT_HEADER: 16, P.ATTR: 88, P.ENTRY_OUT: 128, P.ATTR_OUT: 104,
             P.SETATTR_IN: 88, P.READ_IN: 40, P.WRITE_IN: 40, P.OPEN_OUT: 16,
             P.RELEASE_IN: 24, P.FALLOCATE_IN: 32, P.LSEEK_IN: 24, P.KSTATFS: 80,
             P.DIRENT: 24, P.INVAL_INODE_OUT: 24, P.INVAL_ENTRY_OUT: 16}
    assert {s.format: s.size for s in sizes} == {s.format: n for s, n in sizes.items()}


def test_header_and_read() -> None:
    raw = request(P.Opcode.READ, le((5, 8), (4096, 8), (65536, 4), (0, 4), (0, 8), (2, 4),
                                     (0, 4)), unique=0x1122334455, nodeid=9)
    header, op = parse(raw)
    assert header == P.Header(80, 15, 0x1122334455, 9, 1000, 1000, 4242)
    assert op == P.Read(fh=5, offset=4096, size=65536, flags=2)  # O_RDWR


def test_write_carries_a_view_of_the_buffer() -> None:
    raw = request(P.Opcode.WRITE, le((3, 8), (512, 8), (5, 4), (0, 4), (0, 8), (0, 4),
                                      (0, 4)) + b"hello")
    _, op = parse(raw)
    assert isinstance(op, P.Write) and (op.fh, op.offset, bytes(op.data)) == (3, 512, b"hello")
    raw[-5:] = b"HELLO"  # no copy: the data is the request buffer
    assert bytes(op.data) == b"HELLO"


def test_other_requests() -> None:
    assert parse(request(P.Opcode.LOOKUP, b"lun0\0"))[1] == P.Lookup(b"lun0")
    assert parse(request(P.Opcode.FORGET, le((3, 8)), nodeid=5))[1] == P.Forget(((5, 3),))
    batch = le((2, 4), (0, 4), (5, 8), (1, 8), (6, 8), (2, 8))
    assert parse(request(P.Opcode.BATCH_FORGET, batch))[1] == P.Forget(((5, 1), (6, 2)))
    assert parse(request(P.Opcode.GETATTR, le((0, 4), (0, 4), (9, 8))))[1] == P.GetAttr(None)
    assert parse(request(P.Opcode.GETATTR, le((1, 4), (0, 4), (9, 8))))[1] == P.GetAttr(9)
    setattr_in = le((P.FATTR_SIZE, 4), (0, 4), (0, 8), (1 << 20, 8)) + bytes(64)
    assert parse(request(P.Opcode.SETATTR, setattr_in))[1] == P.SetAttr(P.FATTR_SIZE, None,
                                                                         1 << 20, None)
    assert parse(request(P.Opcode.OPEN, le((2, 4), (0, 4))))[1] == P.Open(2, False)
    assert parse(request(P.Opcode.OPENDIR, le((0, 4), (0, 4))))[1] == P.Open(0, True)
    assert parse(request(P.Opcode.RELEASE, le((4, 8), (0, 4), (0, 4), (0, 8))))[1] == \
        P.Release(4, False)
    readdir = le((1, 8), (2, 8), (4096, 4), (0, 4), (0, 8), (0, 4), (0, 4))
    assert parse(request(P.Opcode.READDIRPLUS, readdir))[1] == P.ReadDir(1, 2, 4096, True)
    assert parse(request(P.Opcode.FSYNC, le((4, 8), (1, 4), (0, 4))))[1] == P.Fsync(4, True)
    fallocate = le((4, 8), (1 << 20, 8), (8 << 20, 8), (3, 4), (0, 4))
    assert parse(request(P.Opcode.FALLOCATE, fallocate))[1] == \
        P.Fallocate(4, 1 << 20, 8 << 20, P.FALLOC_FL_PUNCH_HOLE | P.FALLOC_FL_KEEP_SIZE)
    assert parse(request(P.Opcode.LSEEK, le((4, 8), (100, 8), (3, 4), (0, 4))))[1] == \
        P.Lseek(4, 100, P.SEEK_DATA)
    assert parse(request(P.Opcode.INTERRUPT, le((77, 8))))[1] == P.Interrupt(77)
    assert parse(request(P.Opcode.STATFS, b""))[1] == P.StatFs()
    assert parse(request(P.Opcode.DESTROY, b""))[1] == P.Destroy()
    assert parse(request(P.Opcode.SYMLINK, b"a\0b\0"))[1] == P.Unknown(P.Opcode.SYMLINK)
    assert parse(request(200, b""))[1] == P.Unknown(200)


def test_init_of_a_new_and_an_old_kernel() -> None:
    flags = ASYNC_READ | BIG_WRITES | (1 << 30)
    new = le((7, 4), (44, 4), (131072, 4), (flags, 4), (1, 4)) + bytes(44)
    assert parse(request(P.Opcode.INIT, new))[1] == P.Init(7, 44, 131072, flags | 1 << 32)
    old = le((7, 4), (31, 4), (131072, 4), (flags, 4))
    assert parse(request(P.Opcode.INIT, old))[1] == P.Init(7, 31, 131072, flags)


def test_request_extensions_are_left_out_of_the_argument() -> None:
    raw = request(P.Opcode.LOOKUP, b"x\0" + bytes(6) + bytes(8))
    raw[36:38] = (1).to_bytes(2, "little")  # total_extlen: one 8-byte unit
    _header, body = P.parse_header(memoryview(raw), len(raw))
    assert bytes(body) == b"x\0" + bytes(6)


def test_replies() -> None:
    assert b"".join(P.error(9, errno.ENOSYS)) == le((16, 4), (-errno.ENOSYS, 4), (9, 8))
    out = P.reply(9, P.write_out(4096))
    assert b"".join(out) == le((24, 4), (0, 4), (9, 8), (4096, 4), (0, 4))
    data = memoryview(bytearray(b"abc"))
    out = P.reply(5, data)
    assert out[1] is data  # the data is not copied into the reply
    assert bytes(out[0]) == le((19, 4), (0, 4), (5, 8))
    a = P.Attr(ino=3, mode=0o100600, size=1 << 30, blocks=1 << 21, nlink=1, uid=1000,
               gid=100, blksize=4096, time_ns=1_700_000_000_123_456_789)
    attr = le((3, 8), (1 << 30, 8), (1 << 21, 8), *[(1_700_000_000, 8)] * 3,
              *[(123_456_789, 4)] * 3, (0o100600, 4), (1, 4), (1000, 4), (100, 4), (0, 4),
              (4096, 4), (0, 4))
    assert P.attr_out(a, 60.5) == le((60, 8), (500_000_000, 4), (0, 4)) + attr
    assert P.entry_out(a, 60, 30) == le((3, 8), (0, 8), (60, 8), (30, 8), (0, 4), (0, 4)) + \
        attr
    assert P.open_out(3, P.FOPEN_DIRECT_IO) == le((3, 8), (1, 4), (0, 4))
    assert P.lseek_out(1 << 40) == le((1 << 40, 8))
    assert P.statfs_out(P.FsStat(blocks=10, bsize=4096, files=3)) == \
        le((10, 8), (0, 8), (0, 8), (3, 8), (0, 8), (4096, 4), (255, 4), (4096, 4), (0, 4)) + \
        bytes(24)


def test_dirents_are_padded_and_cut_at_the_size() -> None:
    a = P.Attr(ino=4, mode=0o40755)
    one = P.dirents([(b"lun10", a, 1)], 4096, plus=False)
    assert one == le((4, 8), (1, 8), (5, 4), (P.DT_DIR, 4)) + b"lun10" + bytes(3)
    two = P.dirents([(b"a", a, 1), (b"b", a, 2)], 40, plus=False)
    assert len(two) == 32  # only the first fits in 40 bytes
    plus = P.dirents([(b"a", a, 1)], 4096, plus=True)
    assert plus[:128] == P.entry_out(a, 60, 60) and len(plus) == 128 + 32


def test_notifications() -> None:
    assert b"".join(P.notify_inval_inode(5, 0, 0)) == \
        le((40, 4), (2, 4), (0, 8), (5, 8), (0, 8), (0, 8))
    assert b"".join(P.notify_inval_entry(2, b"lun1")) == \
        le((37, 4), (3, 4), (0, 8), (2, 8), (4, 4), (0, 4)) + b"lun1\0"


@pytest.mark.parametrize(("raw", "unique", "err"), [
    (bytearray(8), None, errno.EIO),  # not even the unique
    (bytearray(le((40, 4), (3, 4), (11, 8))), 11, errno.EIO),  # shorter than the header
    (request(P.Opcode.GETATTR, bytes(16))[:-4], 7, errno.EIO),  # length says more
])
def test_malformed_headers(raw: bytearray, unique: int | None, err: int) -> None:
    with pytest.raises(P.Malformed) as bad:
        P.parse_header(memoryview(raw), len(raw))
    assert (bad.value.unique, bad.value.errno) == (unique, err)


@pytest.mark.parametrize("raw", [
    request(P.Opcode.READ, bytes(39)),
    request(P.Opcode.WRITE, le((3, 8), (0, 8), (10, 4)) + bytes(20) + b"short"),
    request(P.Opcode.LOOKUP, b"no terminator"),
    request(P.Opcode.BATCH_FORGET, le((5, 4), (0, 4)) + bytes(16)),
    request(P.Opcode.INIT, bytes(8)),
])
def test_malformed_arguments_are_answered_with_einval(raw: bytearray) -> None:
    with pytest.raises(P.Malformed) as bad:
        parse(raw)
    assert (bad.value.unique, bad.value.errno) == (7, errno.EINVAL)


u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)


@given(u64, u64, u64, u32, st.binary(max_size=300))
def test_write_round_trip(unique: int, fh: int, offset: int, flags: int, data: bytes) -> None:
    body = P.WRITE_IN.pack(fh, offset, len(data), flags, 0, 0, 0) + data
    header, op = parse(request(P.Opcode.WRITE, body, unique=unique))
    assert header.unique == unique and op == P.Write(fh, offset, memoryview(data))


@given(u64, st.integers(0, 2**63 - 1), st.sampled_from([P.SEEK_DATA, P.SEEK_HOLE]))
def test_lseek_round_trip(fh: int, offset: int, whence: int) -> None:
    assert parse(request(P.Opcode.LSEEK, P.LSEEK_IN.pack(fh, offset, whence, 0)))[1] == \
        P.Lseek(fh, offset, whence)


@given(st.binary(max_size=200), st.integers(0, 60))
def test_any_bytes_decode_or_are_malformed(junk: bytes, opcode: int) -> None:
    raw = request(opcode, junk)
    try:
        parse(raw)
    except P.Malformed as exc:
        assert exc.unique == 7


@given(st.builds(P.Attr, ino=u64, mode=u32, size=st.integers(0, 2**63), blocks=u64,
                 nlink=u32, uid=u32, gid=u32, blksize=u32, time_ns=st.integers(0, 2**62)))
def test_attr_round_trip(a: P.Attr) -> None:
    fields = P.ATTR.unpack(P.attr_out(a, 1)[16:])
    assert (fields[0], fields[1], fields[2], fields[9], fields[10]) == \
        (a.ino, a.size, a.blocks, a.mode, a.nlink)
    assert fields[3] * 10**9 + fields[6] == a.time_ns


def init(minor: int = 44, flags: int = ASYNC_READ | BIG_WRITES | ASYNC_DIO | MAX_PAGES,
         readahead: int = 131072) -> P.Init:
    return P.Init(7, minor, readahead, flags)


def out_fields(payload: bytes) -> tuple[int, ...]:
    return struct.unpack("<IIIIHHIIHHI", payload[:36])


def test_init_asks_for_1_mib_requests_and_64_background_requests() -> None:
    got, payload = negotiate(init(), Limits(max_pages_limit=256))
    assert got is not None and len(payload) == 64
    assert out_fields(payload) == (7, 38, 131072, ASYNC_READ | BIG_WRITES | ASYNC_DIO |
                                   MAX_PAGES, 64, 48, 1 << 20, 1, 256, 0, 0)
    assert got.parallel_direct_writes


def test_init_stays_within_the_kernels_limits() -> None:
    got, _payload = negotiate(init(minor=31), Limits(max_pages_limit=32,
                                                    user_max_background=20,
                                                    user_congestion_threshold=10))
    assert got is not None
    assert (got.minor, got.max_pages, got.max_write, got.max_background,
            got.congestion_threshold) == (31, 32, 128 << 10, 20, 10)
    assert not got.parallel_direct_writes
    got, _ = negotiate(init(flags=ASYNC_READ), Limits())  # no FUSE_MAX_PAGES offered
    assert got is not None and (got.flags, got.max_write) == (ASYNC_READ, 128 << 10)


def test_init_of_other_major_versions() -> None:
    got, payload = negotiate(P.Init(8, 0, 0, 0), Limits())
    assert got is None and out_fields(payload)[:2] == (7, 38)
    with pytest.raises(Unsupported):
        negotiate(P.Init(7, 8, 0, 0), Limits())


def test_a_data_reply_is_the_same_as_a_plain_one() -> None:
    data = memoryview(bytes(range(256)) * 16)
    assert [bytes(b) for b in P.reply_data(7, data)] == [bytes(b) for b in P.reply(7, data)]
