"""PDUStream over trio memory streams: ordering, digests, EOF, interrupted writes."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from blockbridge.iscsi import pdu as p
from blockbridge.iscsi.errors import PDUFormatError
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
