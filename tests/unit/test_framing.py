"""Framing: padding, digests, incremental reading one byte at a time, hostile lengths."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from blockbridge.iscsi import pdu as p
from blockbridge.iscsi.digest import crc32c, digest_bytes
from blockbridge.iscsi.errors import DigestError, PDUFormatError
from blockbridge.iscsi.framing import (
    PLACED_SEGMENT,
    FileRange,
    PDUReader,
    WithFileData,
    encode_buffers,
    encode_bytes,
    encode_with_file,
)


def test_crc32c_rfc_vectors() -> None:
    # RFC 3720 B.4: 32 bytes of zeros, of ones, incrementing and decrementing.
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C
    assert digest_bytes(bytes(32)) == bytes.fromhex("aa36918a")


def test_crc32c_over_pieces_equals_whole() -> None:
    assert crc32c(b"abc", memoryview(b"def"), bytearray(b"g")) == crc32c(b"abcdefg")


@pytest.mark.parametrize("hd", [False, True])
@pytest.mark.parametrize("dd", [False, True])
@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 4095, 4096, 70000])
def test_trickle_feed_round_trip(hd: bool, dd: bool, size: int) -> None:
    pdus = [
        p.DataIn(itt=1, data=bytes(range(256)) * (size // 256) + b"x" * (size % 256)),
        p.SCSICommand(itt=2, cdb=bytes(range(20))),
        p.NopIn(itt=3, data=memoryview(b"ping")),
    ]
    wire = b"".join(encode_bytes(x, header_digest=hd, data_digest=dd) for x in pdus)
    reader = PDUReader(header_digest=hd, data_digest=dd)
    got: list[p.PDU] = []
    for i in range(len(wire)):
        assert reader.bytes_needed() >= 1
        reader.feed(wire[i : i + 1])
        while (pdu := reader.next_pdu()) is not None:
            got.append(pdu)
    assert [type(x) for x in got] == [p.DataIn, p.SCSICommand, p.NopIn]
    assert bytes(got[0].data) == bytes(pdus[0].data)
    assert isinstance(got[1], p.SCSICommand) and got[1].cdb == bytes(range(20))
    assert bytes(got[2].data) == b"ping"
    assert reader.buffered == 0


def test_scatter_gather_keeps_large_data_separate() -> None:
    data = memoryview(bytearray(65536))
    bufs = encode_buffers(p.DataOut(data=data))
    assert len(bufs) == 2 and bufs[1] is data


def test_bytes_needed_hint_for_large_segment() -> None:
    wire = encode_bytes(p.DataIn(data=bytes(10000)))
    reader = PDUReader()
    reader.feed(wire[:48])
    assert reader.bytes_needed() == len(wire) - 48
    assert reader.next_pdu() is None


def test_header_digest_mismatch() -> None:
    wire = bytearray(encode_bytes(p.NopIn(itt=1), header_digest=True))
    wire[20] ^= 1
    reader = PDUReader(header_digest=True)
    reader.feed(wire)
    with pytest.raises(DigestError) as info:
        reader.next_pdu()
    assert info.value.header
    with pytest.raises(DigestError):
        reader.next_pdu()  # the reader stays failed


def test_data_digest_mismatch() -> None:
    wire = bytearray(encode_bytes(p.DataIn(itt=1, data=b"hello"), data_digest=True))
    wire[50] ^= 0xFF
    reader = PDUReader(data_digest=True)
    reader.feed(wire)
    with pytest.raises(DigestError) as info:
        reader.next_pdu()
    assert not info.value.header


def test_oversized_segment_refused_before_reading() -> None:
    bhs = p.DataOut(data=bytes(100)).encode_bhs()
    reader = PDUReader(max_data_segment_length=64)
    reader.feed(bhs)
    with pytest.raises(PDUFormatError):
        reader.next_pdu()


@given(st.binary(max_size=400))
def test_garbage_stream_raises_only_typed_errors(blob: bytes) -> None:
    reader = PDUReader(max_data_segment_length=1 << 20)
    reader.feed(blob)
    try:
        while reader.next_pdu() is not None:
            pass
    except PDUFormatError:
        pass


@given(st.lists(st.integers(1, 9000), min_size=1, max_size=60), st.booleans())
def test_receive_into_the_readers_own_buffer(splits: list[int], parse_between: bool) -> None:
    """get_buffer/commit (the recv_into path) gives the same PDUs as feed, whatever the
    read sizes and however much is parsed between reads (the buffer moves and grows)."""
    pdus = [p.DataIn(itt=i, data=bytes([i]) * (i * 997 % 5000)) for i in range(1, 12)]
    wire = b"".join(encode_bytes(x) for x in pdus)
    reader = PDUReader()
    got: list[p.PDU] = []
    pos, k = 0, 0
    while pos < len(wire):
        n = min(splits[k % len(splits)], len(wire) - pos)
        k += 1
        with reader.get_buffer(n) as view:
            view[:n] = wire[pos : pos + n]
        reader.commit(n)
        pos += n
        while parse_between and (pdu := reader.next_pdu()) is not None:
            got.append(pdu)
    while (pdu := reader.next_pdu()) is not None:
        got.append(pdu)
    assert [(x.itt, bytes(x.data)) for x in got] == [(x.itt, bytes(x.data)) for x in pdus]
    assert reader.buffered == 0
    with pytest.raises(ValueError):
        reader.commit(1 << 30)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(100, 300_000), min_size=1, max_size=20), st.booleans())
@example([4096], False)
@example([65000, 300_000], True)
def test_large_data_in_is_received_into_the_place_the_owner_gives(
        splits: list[int], hd: bool) -> None:
    """With a placement callback, a large data segment is received straight into the
    place it names (a view of the command's buffer); the PDU's data is that view.
    Segments it declines, small ones, padded ones and other PDUs go the usual way."""
    n = PLACED_SEGMENT
    pdus: list[p.PDU] = [
        p.DataIn(itt=1, offset=0, data=bytes([1]) * 3 * n),      # placed
        p.NopIn(itt=2, data=b"ping"),
        p.DataIn(itt=1, offset=3 * n, data=bytes([2]) * n),       # placed after the first
        p.DataIn(itt=3, data=bytes([3]) * n),                     # the callback declines
        p.DataIn(itt=1, offset=4 * n, data=bytes([4]) * (n - 4)), # too small
        p.DataIn(itt=4, data=bytes([5]) * (n + 1)),               # padded: not placed
    ]
    buffer = bytearray(5 * n)
    asked: list[int] = []

    def place(bhs: bytes) -> memoryview | None:
        itt, offset = int.from_bytes(bhs[16:20], "big"), int.from_bytes(bhs[40:44], "big")
        asked.append(itt)
        if itt != 1:
            return None
        return memoryview(buffer)[offset : offset + p.data_segment_length(bhs)]

    wire = b"".join(encode_bytes(x, header_digest=hd) for x in pdus)
    reader = PDUReader(header_digest=hd, max_data_segment_length=1 << 20)
    reader.placement = place
    got: list[p.PDU] = []
    pos, k = 0, 0
    while pos < len(wire):
        while (pdu := reader.next_pdu()) is not None:  # as the transport does
            got.append(pdu)
        want = min(splits[k % len(splits)], len(wire) - pos)
        k += 1
        with reader.get_buffer(want) as view:
            m = min(want, view.nbytes)  # what a recv_into of this view may get
            view[:m] = wire[pos : pos + m]
        reader.commit(m)
        pos += m
    while (pdu := reader.next_pdu()) is not None:
        got.append(pdu)
    assert [(x.itt, bytes(x.data)) for x in got] == [(x.itt, bytes(x.data)) for x in pdus]
    placed = [x for x in got if isinstance(x.data, memoryview) and x.data.obj is buffer]
    assert all(x.itt == 1 for x in placed)
    assert all(len(x.data) >= n for x in placed)
    assert 2 not in asked and 4 not in asked  # small, padded: the callback is not asked
    if max(splits) < n:  # no read brings a large PDU whole: both are placed
        assert len(placed) == 2
        assert buffer[: 4 * n] == bytes([1]) * 3 * n + bytes([2]) * n
    assert reader.buffered == 0


def test_after_a_placed_segment_the_next_read_takes_a_header_only() -> None:
    n = PLACED_SEGMENT
    buffer = bytearray(2 * n)
    wire = b"".join(encode_bytes(p.DataIn(itt=1, offset=i * n, data=bytes([i]) * n))
                    for i in range(2))
    reader = PDUReader()
    reader.placement = lambda bhs: memoryview(buffer)[
        int.from_bytes(bhs[40:44], "big") :][:n]
    reader.feed(wire[:48])
    with reader.get_buffer(1 << 20) as view:
        assert view.nbytes == n and view.obj is buffer
        view[:] = wire[48 : 48 + n]
    reader.commit(n)
    first = reader.next_pdu()
    assert first is not None and first.data.obj is buffer  # type: ignore[union-attr]
    with reader.get_buffer(1 << 20) as view:
        assert view.nbytes == 48  # the next header, so that its data is placed whole
        view[:] = wire[48 + n : 96 + n]
    reader.commit(48)
    with reader.get_buffer(1 << 20) as view:
        assert view.nbytes == n and view.obj is buffer
    assert buffer[:n] == bytes(n)


def test_a_damaged_header_places_nothing() -> None:
    n = PLACED_SEGMENT
    wire = bytearray(encode_bytes(p.DataIn(itt=1, data=bytes([7]) * n), header_digest=True))
    wire[40] ^= 1  # the buffer offset
    reader = PDUReader(header_digest=True)
    asked: list[bytes] = []
    reader.placement = lambda bhs: asked.append(bhs)  # type: ignore[func-returns-value]
    reader.feed(wire[:100])
    assert reader.next_pdu() is None
    reader.feed(wire[100:])
    assert asked == []
    with pytest.raises(DigestError):
        reader.next_pdu()


class _File:
    def fileno(self) -> int:  # never asked: encoding does no I/O
        raise AssertionError


@pytest.mark.parametrize("hd", [False, True])
@pytest.mark.parametrize("size", [1, 4, 4097, 262143])
def test_a_pdu_with_file_data_announces_its_length_and_pads(hd: bool, size: int) -> None:
    rng = FileRange(_File(), 12345, size)
    pdu = p.DataIn(itt=7, datasn=2, offset=4096, final=True)
    parts = encode_with_file(WithFileData(pdu, rng), header_digest=hd)
    # the same PDU with the data in memory: identical bytes around the data segment
    inline = encode_bytes(p.DataIn(itt=7, datasn=2, offset=4096, final=True,
                                   data=bytes(size)), header_digest=hd)
    header = bytes(parts[0])
    assert parts[1] == rng
    pad = bytes(parts[2]) if len(parts) == 3 else b""
    assert header + bytes(size) + pad == inline
    assert len(parts) == (3 if size % 4 else 2)


def test_file_data_is_refused_with_a_data_digest_or_data_of_its_own() -> None:
    rng = FileRange(_File(), 0, 512)
    with pytest.raises(ValueError, match="digest"):
        encode_with_file(WithFileData(p.DataIn(), rng), data_digest=True)
    with pytest.raises(ValueError, match="data of its own"):
        encode_with_file(WithFileData(p.DataIn(data=b"x"), rng))
    with pytest.raises(ValueError, match="0 bytes"):
        encode_with_file(WithFileData(p.DataIn(), FileRange(_File(), 0, 0)))


def test_a_part_of_a_file_range_stays_inside_it() -> None:
    rng = FileRange(_File(), 1000, 300)
    assert rng.part(0, 100) == FileRange(rng.file, 1000, 100)
    assert rng.part(200, 256) == FileRange(rng.file, 1200, 100)
    with pytest.raises(TypeError):
        len(rng)  # type: ignore[arg-type]
