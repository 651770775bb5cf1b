"""The FUSE request intake on a pipe standing in for /dev/fuse: a request is read at once
when one is queued, a worker woken for a request another worker took waits again, the
workers stop when told to, and a stream of ready requests still lets other tasks run."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from blockbridge.fuse.intake import FAIR_SHARE, Intake


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


async def test_a_queued_request_is_taken_without_a_checkpoint(pipe: tuple[int, int]) -> None:
    r, w = pipe
    intake = Intake(r)
    os.write(w, b"x")
    with trio.testing.assert_no_checkpoints():
        assert await intake.wait()
    assert os.read(r, 1) == b"x"


async def test_a_worker_woken_for_a_taken_request_waits_again(pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.set_blocking(r, False)  # /dev/fuse blocks: here an empty read fails instead
    intake = Intake(r)
    results: list[bool] = []

    async def worker() -> None:
        results.append(await intake.wait())
        results.append(os.read(r, 1) == b"y")  # BlockingIOError if nothing is there

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
        await trio.testing.wait_all_tasks_blocked()
        os.write(w, b"x")  # epoll will wake the worker...
        assert await intake.wait()  # ...but this caller takes the request first
        assert os.read(r, 1) == b"x"
        await trio.testing.wait_all_tasks_blocked()
        assert results == []  # the worker found the device empty and went back to waiting
        os.write(w, b"y")
    assert results == [True, True]


async def test_close_stops_waiting_and_idle_workers(pipe: tuple[int, int]) -> None:
    r, _ = pipe
    intake = Intake(r)
    results: list[bool] = []

    async def worker() -> None:
        results.append(await intake.wait())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for _ in range(3):  # one waits in epoll, two behind it
                nursery.start_soon(worker)
            await trio.testing.wait_all_tasks_blocked()
            intake.close()
            trio.lowlevel.notify_closing(r)  # what pyfuse3.terminate() does
    assert results == [False, False, False]
    assert not await intake.wait()


async def test_a_stream_of_ready_requests_lets_other_tasks_run(pipe: tuple[int, int]) -> None:
    r, w = pipe
    intake = Intake(r)
    os.write(w, b"x")  # stays readable: never read
    ran = trio.Event()

    async def other() -> None:
        ran.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        calls = 0
        while not ran.is_set() and calls < 3 * FAIR_SHARE:
            assert await intake.wait()
            calls += 1
        assert ran.is_set()
        assert calls > FAIR_SHARE  # ...but not after every request


async def test_idle_workers_stop_and_the_last_one_keeps_polling(
        pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("blockbridge.fuse.intake.IDLE_SECONDS", 0.2)
    r, w = pipe
    intake = Intake(r)
    results: list[bool] = []

    async def worker() -> None:
        results.append(await intake.wait())

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(worker)
        await trio.sleep(0.5)
        assert results == [False, False, False]  # three idle workers ended
        os.write(w, b"x")  # the one polling is still there
    assert results == [False, False, False, True]


async def test_a_cancelled_idle_worker_leaves_no_gap(pipe: tuple[int, int]) -> None:
    r, w = pipe
    intake = Intake(r)
    results: list[str] = []

    async def worker(name: str, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            if await intake.wait():
                results.append(name)
                os.read(r, 1)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker, "a")  # polls
            b = await nursery.start(worker, "b")  # parks
            await nursery.start(worker, "c")  # parks above b
            await trio.testing.wait_all_tasks_blocked()
            b.cancel()
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(2):  # a takes the first request, then c polls and takes one
                os.write(w, b"x")
                await trio.testing.wait_all_tasks_blocked()
    assert results == ["a", "c"]


def test_without_what_it_replaces_pyfuse3_keeps_its_own_loop(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import pyfuse3

    from blockbridge.fuse import intake

    original = pyfuse3._wait_fuse_readable
    with caplog.at_level("INFO", logger="blockbridge.fuse.intake"):
        monkeypatch.setattr(intake, "fuse_device_fd", lambda: None)  # nothing mounted here
        assert intake.install() is None
        assert "no single /dev/fuse descriptor" in caplog.text
        monkeypatch.delattr(pyfuse3, "_wait_fuse_readable")
        assert intake.install() is None
        assert "has no _wait_fuse_readable" in caplog.text
    monkeypatch.undo()
    assert pyfuse3._wait_fuse_readable is original  # left untouched
