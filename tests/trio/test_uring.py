"""File I/O through io_uring, and the logical unit's choice between it, the page cache
and worker threads."""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import blockbridge_target.io as io_module
import blockbridge_target.pagecache as pagecache
import blockbridge_target.uring as uring_module
import blockbridge_target.uring_abi as uring_abi
import outcome
import pytest
import trio
from blockbridge_target.backends.file import FileBackend
from blockbridge_target.lun import IN_FLIGHT, LogicalUnit, Nexus, Pending, SCSIResult
from blockbridge_target.uring import ENTRIES, Uring, open_uring

from blockbridge.scsi.constants import Op, Status

A = Nexus("iqn.2026-11.test:a", b"\x80\0\0\0\0\1", "iqn.2026-11.test:t")


def ring_or_skip() -> Uring:
    ring = open_uring()
    if ring is None:
        pytest.skip(f"io_uring is not usable here: {uring_module._refused}")
    return ring


@contextlib.contextmanager
def ring_and_fd(path: Path, flags: int = os.O_RDWR) -> Iterator[tuple[Uring, int]]:
    """A ring for this trio run and ``path`` opened, both closed afterwards."""
    ring = ring_or_skip()
    fd = os.open(path, flags)
    try:
        yield ring, fd
    finally:
        os.close(fd)
        ring.close()


def read10(lba: int, n: int, flags: int = 0) -> bytes:
    return bytes([Op.READ_10, flags]) + lba.to_bytes(4, "big") + b"\0" + n.to_bytes(2, "big") \
        + b"\0"


def at_once(lu: LogicalUnit, cdb: bytes, data: bytes | memoryview = b"") -> SCSIResult | None:
    """The result of ``cdb`` if ``submit`` finished it at once; None if it needs a task."""
    outcome = lu.submit(cdb, A, data)
    if isinstance(outcome, SCSIResult):
        return outcome
    assert isinstance(outcome, Pending)
    return None


def evict(path: Path) -> None:
    """Drop the (clean) pages of ``path`` from the page cache, and see that they went:
    under load one ``POSIX_FADV_DONTNEED`` may leave pages behind."""
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(100):
            os.fsync(fd)  # dirty pages stay in the cache
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            left = pagecache.resident(fd, 0, os.fstat(fd).st_size)
            if not left:  # none left, or no cachestat to ask (then trust the advice)
                return
            time.sleep(0.01)
        pytest.fail(f"{left} pages of {path.name} stay in the page cache")
    finally:
        os.close(fd)


@pytest.fixture
def data_file(disk_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(1 << 20)
    path = disk_path / "d.img"
    path.write_bytes(data)
    return path, data


async def test_read_write_fdatasync_and_errors(data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    with ring_and_fd(path) as (ring, fd):
        buf = bytearray(8192)
        assert await ring.read(fd, buf, 4096) == 8192
        assert buf == data[4096:12288]
        assert await ring.write(fd, bytearray(b"x" * 512), 0) == 512
        await ring.fdatasync(fd)
        assert path.read_bytes()[:512] == b"x" * 512
        with pytest.raises(TypeError):  # whole bytearrays only: their export pins them
            await ring.read(fd, memoryview(buf)[100:200], 0)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await ring.write(fd, b"bytes", 0)  # type: ignore[arg-type]
        tail = bytearray(4096)
        assert await ring.read(fd, tail, len(data) - 1000) == 1000  # short at end of file
        with pytest.raises(OSError) as err:
            await ring.read(-1, buf, 0)
        assert err.value.errno == 9  # EBADF, raised in the caller's task


async def test_buffers_are_let_go_after_the_operation(data_file: tuple[Path, bytes]) -> None:
    # The ring holds an export of each buffer while the kernel may use it: after the
    # operation the buffer must be ours alone again.
    path, _data = data_file
    with ring_and_fd(path) as (ring, fd):
        buf = bytearray(4096)
        await ring.read(fd, buf, 0)
        await ring.write(fd, buf, 0)
        assert sys.getrefcount(buf) == 2  # the name and getrefcount's argument
        buf.extend(b"x")  # no buffer export left: the bytearray can be resized


async def test_more_operations_than_ring_entries_all_complete(
    data_file: tuple[Path, bytes],
) -> None:
    path, data = data_file
    got: dict[int, bytes] = {}

    async def one(i: int) -> None:
        buf = bytearray(512)
        await ring.read(fd, buf, i * 512)
        got[i] = bytes(buf)

    with ring_and_fd(path, os.O_RDONLY) as (ring, fd):
        async with trio.open_nursery() as nursery:
            for i in range(ENTRIES * 3):
                nursery.start_soon(one, i)
    assert all(got[i] == data[i * 512 : (i + 1) * 512] for i in range(ENTRIES * 3))


async def test_lun_reads_and_writes_through_the_ring(data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    lu = LogicalUnit(0, FileBackend(str(path)), target_name="iqn.2026-11.test:t")
    ring_or_skip().close()
    try:
        buf = bytearray(64 << 10)
        await lu.io.read(8192, buf)  # the path a page-cache miss takes
        assert lu.io._ring is not None
        assert buf == data[8192 : 8192 + len(buf)]
        await lu.io.write(512, memoryview(bytearray(b"y" * 1024)), fua=True)  # whole view
        await lu.io.flush()
        assert path.read_bytes()[512:1536] == b"y" * 1024
    finally:
        lu.close()
    assert lu.io._ring is None


async def test_lun_falls_back_to_threads_without_io_uring(
    data_file: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, data = data_file
    monkeypatch.setattr(io_module, "open_uring", lambda: None)
    lu = LogicalUnit(0, FileBackend(str(path)), target_name="iqn.2026-11.test:t")
    try:
        buf = bytearray(4096)
        await lu.io.read(0, buf)
        assert buf == data[:4096]
        await lu.io.write(0, b"z" * 512, fua=True)
        assert path.read_bytes()[:512] == b"z" * 512
        assert lu.io._ring is None
    finally:
        lu.close()


async def test_refusal_is_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise uring_module.UringUnavailable("the kernel refused io_uring: test")

    monkeypatch.setattr(uring_module, "_refused", None)
    monkeypatch.setattr(uring_module, "Uring", refuse)
    assert open_uring() is None
    assert uring_module._refused == "the kernel refused io_uring: test"
    monkeypatch.setattr(uring_module, "Uring", lambda: pytest.fail("asked again"))
    assert open_uring() is None


async def test_submit_finishes_only_cached_plain_reads_at_once(
    data_file: tuple[Path, bytes],
) -> None:
    path, data = data_file
    path.read_bytes()  # in the page cache
    lu = LogicalUnit(0, FileBackend(str(path)), target_name="iqn.2026-11.test:t")
    try:
        r = at_once(lu, read10(4, 8))
        assert r is not None and r.status == Status.GOOD
        assert bytes(r.data) == data[2048 : 2048 + 4096]
        blocks = len(data) // 512
        assert at_once(lu, read10(blocks - 1, 2)) is None  # out of range: slow path
        assert at_once(lu, read10(0, 8, flags=0x20)) is None  # protection: slow path
        assert at_once(lu, read10(0, 0)) is None  # zero length
        assert at_once(lu, bytes([Op.WRITE_10]) + bytes(9)) is None
        assert at_once(lu, bytes([Op.READ_16]) + bytes(5)) is None  # short CDB
        await lu.execute(bytes(6), b"", A)  # TEST UNIT READY: A is a known nexus
        lu.logical_unit_reset(by=None)  # ... with a unit attention pending now
        assert at_once(lu, read10(0, 8)) is None
    finally:
        lu.close()


def write10(lba: int, n: int, flags: int = 0) -> bytes:
    return bytes([Op.WRITE_10, flags]) + lba.to_bytes(4, "big") + b"\0" \
        + n.to_bytes(2, "big") + b"\0"


async def test_submit_writes_whole_pages_of_immediate_data_at_once(
    data_file: tuple[Path, bytes],
) -> None:
    path, data = data_file
    lu = LogicalUnit(0, FileBackend(str(path)), target_name="iqn.2026-11.test:t")
    try:
        page = os.urandom(4096)
        r = at_once(lu, write10(8, 8), memoryview(page))
        assert r is not None and r.status == Status.GOOD
        assert path.read_bytes()[4096:8192] == page
        assert at_once(lu, write10(8, 8), page[:512]) is None  # data still to come
        assert at_once(lu, write10(1, 1), page[:512]) is None  # part of a page
        assert at_once(lu, write10(8, 8, flags=0x08), page) is None  # FUA
        lu.mode.write_cache = False
        assert at_once(lu, write10(8, 8), page) is None  # write-through
        lu.mode.write_cache = True
        lu.read_only = True
        assert at_once(lu, write10(8, 8), page) is None  # refused on the task path
    finally:
        lu.close()
    assert path.read_bytes()[8192:] == data[8192:]


async def test_start_read_calls_back_with_the_outcome(data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    got: list[object] = []
    done = trio.Event()

    def finished(result: object) -> None:
        got.append(result)
        if len(got) == 2:
            done.set()

    with ring_and_fd(path, os.O_RDONLY) as (ring, fd):
        buf = bytearray(4096)
        assert ring.start_read(fd, buf, 8192, finished)
        assert ring.start_read(-1, bytearray(512), 0, finished)  # fails: EBADF
        with trio.fail_after(5):
            await done.wait()
        outcomes = {type(r).__name__: r for r in got}
        assert outcomes["Value"].unwrap() == 4096  # type: ignore[attr-defined]
        assert buf == data[8192:12288]
        with pytest.raises(OSError):
            outcomes["Error"].unwrap()  # type: ignore[attr-defined]
    assert not ring.start_read(0, bytearray(1), 0, finished)  # closed: nothing started


async def test_submit_answers_a_read_a_miss_from_the_completion(
    data_file: tuple[Path, bytes],
) -> None:
    path, data = data_file
    lu = LogicalUnit(0, FileBackend(str(path)), target_name="iqn.2026-11.test:t")
    ring_or_skip().close()
    results: list[SCSIResult] = []
    done = trio.Event()

    def answer(r: SCSIResult) -> None:
        results.append(r)
        done.set()

    try:
        for _ in range(20):
            evict(path)
            # A RWF_NOWAIT read that misses starts readahead, and may find the page read
            # by the time it looks again (a fast disk): then it is answered at once.
            outcome = lu.submit(read10(16, 8), A, done=answer)
            if outcome is IN_FLIGHT:
                break
            assert isinstance(outcome, SCSIResult)
            assert bytes(outcome.data) == data[8192 : 8192 + 4096]
        assert outcome is IN_FLIGHT
        with trio.fail_after(5):
            await done.wait()
        assert results[0].status == Status.GOOD
        assert bytes(results[0].data) == data[8192 : 8192 + 4096]
        evict(path)
        # 128 KiB: not on io_uring but in a task, with a thread (or at once, if the
        # readahead that its RWF_NOWAIT try started was already done: a fast disk)
        big = lu.submit(read10(0, 256), A, done=answer)
        assert isinstance(big, Pending) or (isinstance(big, SCSIResult)
                                            and bytes(big.data) == data[: 128 << 10])
        assert isinstance(lu.submit(write10(0, 8), A, done=answer), Pending)
        out_of_range = read10(len(data) // 512, 1)
        assert isinstance(lu.submit(out_of_range, A, done=answer), Pending)
        os.close(lu.backend.fd)  # type: ignore[attr-defined]
        done = trio.Event()
        assert lu.submit(read10(0, 8), A, done=answer) is IN_FLIGHT
        with trio.fail_after(5):
            await done.wait()
        assert results[1].status == Status.CHECK_CONDITION  # the I/O error, as sense data
        lu.backend.fd = os.open(path, os.O_RDONLY)  # type: ignore[attr-defined]
    finally:
        lu.close()


async def test_one_pass_of_the_event_loop_is_one_submission(
    data_file: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, data = data_file
    submitted: list[int] = []
    enter = uring_abi.enter

    def counting(fd: int, to_submit: int, min_complete: int = 0, flags: int = 0) -> int:
        if to_submit:
            submitted.append(to_submit)
        return enter(fd, to_submit, min_complete, flags)

    monkeypatch.setattr(uring_abi, "enter", counting)
    got: dict[int, object] = {}
    done = trio.Event()

    def finished(i: int, result: outcome.Outcome[int]) -> None:
        got[i] = result.unwrap()
        if len(got) == 40:
            done.set()

    with ring_and_fd(path, os.O_RDONLY) as (ring, fd):
        bufs = [bytearray(4096) for _ in range(40)]
        for i, buf in enumerate(bufs):  # one pass: no checkpoint in between
            assert ring.start_read(fd, buf, i * 4096, partial(finished, i))
        with trio.fail_after(5):
            await done.wait()
        assert submitted == [40]
        assert all(bufs[i] == data[i * 4096 : (i + 1) * 4096] for i in range(40))
        assert await ring.read(fd, bytearray(512), 0) == 512  # and the next pass: one more
        assert submitted == [40, 1]


async def test_follow_ups_run_once_after_the_batch_of_completions(
    data_file: tuple[Path, bytes],
) -> None:
    path, _data = data_file
    seen: list[str] = []
    done = trio.Event()

    def write_answers() -> None:
        seen.append("write")

    def finished(i: int, result: outcome.Outcome[int]) -> Callable[[], None] | None:
        assert result.unwrap() == 4096
        seen.append("done")
        if seen.count("done") == 40:
            done.set()
        return write_answers if i % 4 else None  # the same follow-up from many

    with ring_and_fd(path, os.O_RDONLY) as (ring, fd):
        bufs = [bytearray(4096) for _ in range(40)]
        for i, buf in enumerate(bufs):
            assert ring.start_read(fd, buf, i * 4096, partial(finished, i))
        with trio.fail_after(5):
            await done.wait()
    assert seen.count("done") == 40
    assert seen[-1] == "write"  # after the last completion of the last batch
    # once per batch: never twice without a completion in between
    assert all(not (a == b == "write") for a, b in itertools.pairwise(seen))


async def test_a_refused_submission_fails_its_operations(
    data_file: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, _data = data_file
    enter = uring_abi.enter

    def refusing(fd: int, to_submit: int, min_complete: int = 0, flags: int = 0) -> int:
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    with ring_and_fd(path) as (ring, fd):
        monkeypatch.setattr(uring_abi, "enter", refusing)
        buf = bytearray(4096)
        with pytest.raises(OSError) as err:
            await ring.read(fd, buf, 0)
        assert err.value.errno == errno.ENOMEM
        buf.extend(b"x")  # no export left: the buffer was let go
        del buf[4096:]
        monkeypatch.setattr(uring_abi, "enter", enter)
        assert await ring.read(fd, buf, 0) == 4096  # the ring goes on


async def test_closing_with_reads_in_flight_finishes_them_then_lets_go(
    data_file: tuple[Path, bytes],
) -> None:
    path, data = data_file
    got: list[int] = []
    ring = ring_or_skip()
    fd = os.open(path, os.O_RDONLY)
    try:
        bufs = [bytearray(4096) for _ in range(8)]
        for i, buf in enumerate(bufs):
            assert ring.start_read(fd, buf, i * 4096, lambda r: got.append(r.unwrap()))
        ring.close()  # with eight reads in flight
        assert not ring.start_read(fd, bytearray(1), 0, lambda r: None)
        with pytest.raises(trio.ClosedResourceError):
            await ring.read(fd, bytearray(1), 0)
        with trio.fail_after(5):
            while ring._efd >= 0:  # released after the last completion
                await trio.sleep(0.001)
        assert got == [4096] * 8
        assert bufs == [bytearray(data[i * 4096 : (i + 1) * 4096]) for i in range(8)]
        for buf in bufs:
            buf.extend(b"x")  # no export left
    finally:
        os.close(fd)


def test_a_run_that_ends_under_reads_waits_for_them_and_lets_go(
    data_file: tuple[Path, bytes],
) -> None:
    path, _data = data_file
    bufs = [bytearray(4096) for _ in range(16)]
    rings: list[Uring] = []
    fd = os.open(path, os.O_RDONLY)

    async def main() -> None:
        ring = ring_or_skip()
        rings.append(ring)
        for i, buf in enumerate(bufs):
            assert ring.start_read(fd, buf, i * 4096, lambda r: None)
        await trio.sleep(0)  # submitted; the run ends before they are reaped

    try:
        trio.run(main)
    finally:
        os.close(fd)
    assert rings[0]._efd == -1 and not rings[0]._pending
    for buf in bufs:
        buf.extend(b"x")  # no export left


@pytest.mark.parametrize(("code", "said"), [
    (errno.EPERM, "Operation not permitted"),  # kernel.io_uring_disabled, seccomp
    (errno.ENOSYS, "Function not implemented"),  # no io_uring in this kernel
])
async def test_a_kernel_that_refuses_io_uring_is_named_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, code: int, said: str,
) -> None:
    def refuse(entries: int, flags: int) -> tuple[int, uring_abi.Params]:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(uring_module, "_refused", None)
    monkeypatch.setattr(uring_abi, "setup", refuse)
    assert open_uring() is None
    assert open_uring() is None
    assert [r.getMessage() for r in caplog.records] == [
        f"file I/O uses worker threads: the kernel refused io_uring: {said}"]


async def test_a_kernel_without_submit_all_gets_a_plain_ring(
    data_file: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, data = data_file
    setup = uring_abi.setup
    asked: list[int] = []

    def before_5_18(entries: int, flags: int) -> tuple[int, uring_abi.Params]:
        asked.append(flags)
        if flags:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return setup(entries, flags)

    monkeypatch.setattr(uring_abi, "setup", before_5_18)
    with ring_and_fd(path) as (ring, fd):
        buf = bytearray(4096)
        assert await ring.read(fd, buf, 4096) == 4096 and buf == data[4096:8192]
    assert asked == [uring_abi.IORING_SETUP_SUBMIT_ALL, 0]


async def test_after_a_run_of_misses_small_reads_skip_the_page_cache(
    data_file: tuple[Path, bytes],
) -> None:
    path, _data = data_file
    lu = LogicalUnit(0, FileBackend(str(path)), target_name="iqn.2026-11.test:t")
    engine = lu.io
    assert engine.page_cache is not None
    looks: list[int] = []
    hit = False

    def look(offset: int, into: bytearray) -> bool:
        looks.append(offset)
        return hit

    engine.page_cache.read = look  # type: ignore[method-assign]
    small = bytearray(4096)
    try:
        for i in range(io_module.MISS_RUN):  # misses, each one looked at
            assert not engine.read_at_once(i * 4096, small)
        assert len(looks) == io_module.MISS_RUN
        looks.clear()
        for i in range(2 * io_module.PROBE_EVERY):  # now one in PROBE_EVERY is looked at
            assert not engine.read_at_once(i * 4096, small)
        assert len(looks) == 2
        looks.clear()
        big = bytearray(io_module.URING_READ + 4096)  # too big for io_uring: always looked at
        assert not engine.read_at_once(0, big)
        assert looks == [0]
        looks.clear()
        hit = True  # the cache warmed up: the next look hits and ends the run
        for i in range(io_module.PROBE_EVERY):
            engine.read_at_once(i * 4096, small)
        assert len(looks) == 1
        assert engine.read_at_once(0, small) and engine.read_at_once(4096, small)
        assert len(looks) == 3
    finally:
        lu.close()
