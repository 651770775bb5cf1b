"""PDUStream over trio memory streams: ordering, digests, EOF, interrupted writes; over
loopback TCP: PDUs whose data is sent from a file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing

from blockbridge.iscsi import pdu as p
from blockbridge.iscsi.errors import PDUFormatError
from blockbridge.iscsi.framing import FileRange, WithFileData
from blockbridge.transport import ConnectionClosed, PDUStream


def pair() -> tuple[PDUStream, PDUStream]:
    a, b = trio.testing.memory_stream_pair()
    return PDUStream(a), PDUStream(b)


async def test_pdus_arrive_in_order_with_digests() -> None:
    left, right = pair()
    for s in (left, right):
        s.header_digest = s.data_digest = True
    sent = [p.DataIn(itt=i, data=bytes([i]) * (i * 1000 + 1)) for i in range(20)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.send_pdus, sent)
        got = [await right.receive_pdu() for _ in sent]
    assert [x.itt for x in got] == list(range(20))
    assert all(bytes(g.data) == bytes(s.data) for g, s in zip(got, sent, strict=True))


async def test_concurrent_writers_never_interleave() -> None:
    left, right = pair()

    async def writer(base: int) -> None:
        for i in range(50):
            await left.send_pdu(p.DataOut(itt=base + i, data=bytes(70000)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer, 0)
        nursery.start_soon(writer, 1000)
        got = [await right.receive_pdu() for _ in range(100)]
    assert sorted(x.itt for x in got) == sorted([*range(50), *range(1000, 1050)])


async def test_eof_is_connection_closed() -> None:
    left, right = pair()
    await left.stream.aclose()
    with pytest.raises(ConnectionClosed):
        await right.receive_pdu()


async def test_eof_mid_pdu_is_reported() -> None:
    a, b = trio.testing.memory_stream_pair()
    right = PDUStream(b)
    await a.send_all(p.encode_pdu(p.NopIn(data=b"abcdef"))[:30])
    await a.aclose()
    with pytest.raises(ConnectionClosed, match="middle of a PDU"):
        await right.receive_pdu()


async def test_garbage_is_a_typed_error() -> None:
    a, b = trio.testing.memory_stream_pair()
    right = PDUStream(b)
    junk = bytearray(48)
    junk[0] = 0x1E  # no such opcode
    await a.send_all(bytes(junk))
    with pytest.raises(PDUFormatError):
        await right.receive_pdu()


async def test_cancelled_write_marks_stream_broken() -> None:
    a, _b = trio.testing.lockstep_stream_pair()
    left = PDUStream(a)
    with trio.move_on_after(0.05):
        await left.send_pdu(p.DataOut(data=bytes(1 << 20)))  # nobody reads: blocks
    assert left.broken
    with pytest.raises(ConnectionClosed):
        await left.send_pdu(p.NopOut())


async def test_posted_pdus_go_out_with_the_next_flush_in_order() -> None:
    left, right = pair()
    released: list[int] = []
    left.post([p.DataIn(itt=1, data=b"a")], after=lambda: released.append(1))
    left.post([p.DataIn(itt=2, data=b"b")], after=lambda: released.append(2))
    assert released == []  # nothing is written before a flush
    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.send_pdu, p.DataIn(itt=3, data=b"c"))  # joins the batch
        got = [await right.receive_pdu() for _ in range(3)]
    assert [x.itt for x in got] == [1, 2, 3]
    assert released == [1, 2]


async def test_flush_while_the_last_batch_is_being_written_returns() -> None:
    # A flush that finds the queue empty while another task writes the last batch waits
    # for that write, not for a next batch that never comes (that hung the target).
    a, b = trio.testing.lockstep_stream_pair()  # a write blocks until it is received
    left, right = PDUStream(a), PDUStream(b)
    flushed = trio.Event()

    async def flush() -> None:
        await left.flush()
        flushed.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(left.send_pdu, p.DataIn(itt=1, data=bytes(100_000)))
            await trio.testing.wait_all_tasks_blocked()  # the writer is inside its write
            nursery.start_soon(flush)
            await trio.testing.wait_all_tasks_blocked()
            assert not flushed.is_set()  # the batch in progress is not written yet
            assert (await right.receive_pdu()).itt == 1
            await flushed.wait()


async def test_post_after_a_failed_write_raises_and_skips_callbacks() -> None:
    a, _b = trio.testing.memory_stream_pair()
    left = PDUStream(a)
    await a.aclose()
    released: list[int] = []
    left.post([p.DataIn(itt=1, data=b"a")], after=lambda: released.append(1))
    with pytest.raises(ConnectionClosed):
        await left.flush()
    with pytest.raises(ConnectionClosed):
        left.post([p.DataIn(itt=2, data=b"b")])
    assert released == []


async def tcp_pair() -> tuple[PDUStream, PDUStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return PDUStream(client), PDUStream(server)


class _Backing:
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)

    def fileno(self) -> int:
        return self.fd


@pytest.mark.parametrize("trio_sendmsg", [False, True])
async def test_file_ranges_go_out_in_order_with_other_pdus_through_a_full_socket(
        tmp_path: Path, trio_sendmsg: bool) -> None:
    content = os.urandom(8 << 20)
    (tmp_path / "f").write_bytes(content)
    backing = _Backing(tmp_path / "f")
    left, right = await tcp_pair()
    assert left.sends_files
    assert left._raw is not None  # sends that succeed at once skip trio's scheduler pass
    if trio_sendmsg:
        left._raw = None  # what a trio without a standard socket inside gets
    ranges = [(0, 8 << 20), (1 << 20, 5), (12345, 1_000_001), ((8 << 20) - 4096, 4096),
              (4096, (8 << 20) - 4096)]
    items: list[p.PDU | WithFileData] = []
    for i, (offset, length) in enumerate(ranges):
        items.append(WithFileData(p.DataIn(itt=i), FileRange(backing, offset, length)))
        items.append(p.NopIn(itt=100 + i, data=b"between"))
    right.max_data_segment_length = 16 << 20
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(left.send_pdus, items)
            await trio.sleep(0.2)  # the sender fills the socket and has to wait
            got = [await right.receive_pdu() for _ in items]
    for i, (offset, length) in enumerate(ranges):
        data, nop = got[2 * i], got[2 * i + 1]
        assert isinstance(data, p.DataIn) and data.itt == i
        assert bytes(data.data) == content[offset : offset + length]
        assert isinstance(nop, p.NopIn) and bytes(nop.data) == b"between"
    assert left.bytes_sent == right.bytes_received
    os.close(backing.fd)


async def test_a_file_that_shrank_is_sent_as_zeros_and_the_framing_holds(
        tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"\xaa" * 300_000)
    backing = _Backing(tmp_path / "f")
    left, right = await tcp_pair()
    left.post([WithFileData(p.DataIn(itt=1), FileRange(backing, 0, 300_000)),
               p.NopIn(itt=2)])
    os.truncate(tmp_path / "f", 100_000)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(left.flush)
            first, second = await right.receive_pdu(), await right.receive_pdu()
    assert bytes(first.data) == b"\xaa" * 100_000 + bytes(200_000)
    assert second.itt == 2
    os.close(backing.fd)


async def test_file_data_is_refused_where_it_cannot_be_sent_from_the_file() -> None:
    rng = FileRange(_Backing.__new__(_Backing), 0, 4096)
    left, _right = pair()  # not a socket
    assert not left.sends_files
    with pytest.raises(ValueError, match="plain TCP"):
        left.post([WithFileData(p.DataIn(), rng)])
    tcp_left, tcp_right = await tcp_pair()
    tcp_left.data_digest = True
    assert not tcp_left.sends_files
    with pytest.raises(ValueError, match="plain TCP"):
        tcp_left.post([WithFileData(p.DataIn(), rng)])
    for s in (tcp_left, tcp_right):
        await s.aclose()
