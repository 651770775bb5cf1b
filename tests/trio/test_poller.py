"""The Poller: handlers run between trio's passes, and trio keeps working around it."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import trio

from blockbridge.poller import Poller


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def echo(sock: socket.socket, seen: list[bytes]) -> None:
    data = sock.recv(100)
    seen.append(data)
    sock.send(data.upper())


async def test_handlers_answer_and_tasks_timers_and_threads_still_run(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    poller = Poller()
    seen: list[bytes] = []
    poller.add(ours.fileno(), lambda: echo(ours, seen))
    peer = trio.socket.from_stdlib_socket(theirs)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poller.run)
            await trio.sleep(0.01)
            assert Poller.current.get() is poller
            for i in range(20):
                await peer.send(b"ping %d" % i)
                assert await peer.recv(100) == b"PING %d" % i
            await trio.sleep(0.05)  # a deadline while the poller waits
            assert await trio.to_thread.run_sync(lambda: 42) == 42  # a thread's result
            poller.stop()
    assert seen == [b"ping %d" % i for i in range(20)]
    assert Poller.current.get() is None


async def test_a_handler_that_wakes_a_task_lets_it_run(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    poller = Poller()
    woken = trio.Event()

    def readable() -> None:
        ours.recv(100)
        woken.set()

    poller.add(ours.fileno(), readable)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poller.run)
            await trio.sleep(0.01)
            theirs.send(b"x")
            await woken.wait()
            poller.stop()


async def test_a_failing_handler_ends_run_with_its_error_and_detaches_the_others(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    poller = Poller()
    detached: list[str] = []
    other_ours, other_theirs = socket.socketpair()

    def readable() -> None:
        raise RuntimeError("handler failed")

    poller.add(ours.fileno(), readable)
    poller.add(other_ours.fileno(), lambda: None, lambda: detached.append("other"))
    theirs.send(b"x")
    try:
        with trio.fail_after(10), pytest.raises(RuntimeError, match="handler failed"):
            await poller.run()
    finally:
        other_ours.close()
        other_theirs.close()
    assert detached == ["other"]


async def test_stop_from_a_handler_returns_from_run(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    poller = Poller()

    def readable() -> None:
        ours.recv(100)
        poller.stop()

    poller.add(ours.fileno(), readable)
    theirs.send(b"x")
    with trio.fail_after(10):
        await poller.run()


async def test_answers_that_come_quickly_are_handled_without_a_pass_of_trio(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """A peer (a thread here) that answers within the window is served from the
    instrument: the poller's own task seldom wakes."""
    ours, theirs = pair
    theirs.setblocking(True)
    woken: list[int] = []

    class Counting(Poller):
        def _serve_ready(self) -> None:
            woken.append(1)
            super()._serve_ready()

    poller = Counting(window=0.5)
    seen: list[bytes] = []
    poller.add(ours.fileno(), lambda: echo(ours, seen))

    def peer() -> None:
        for i in range(50):
            theirs.send(b"ping %d" % i)
            assert theirs.recv(100) == b"PING %d" % i

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poller.run)
            await trio.sleep(0.01)
            await trio.to_thread.run_sync(peer)
            poller.stop()
    assert len(seen) == 50
    assert len(woken) < 10


async def test_it_does_not_wait_first_while_something_waits_for_what_only_trio_sees(
        pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch) -> None:
    ours, _theirs = pair
    monkeypatch.setattr("blockbridge.poller.BUSY_LIMIT", 1.0)
    poller = Poller(window=1.0)
    poller.add(ours.fileno(), lambda: None)
    before = trio.current_time()
    with poller.elsewhere():
        poller.before_io_wait(1.0)  # a worker thread is busy: trio must wait for it
    assert trio.current_time() - before < 0.5
    poller.before_io_wait(0.05)  # nothing elsewhere: it waits (for its own descriptors)
    assert trio.current_time() - before >= 0.05
    poller._epoll.close()


async def test_idle_hooks_run_before_it_waits(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _theirs = pair
    poller = Poller(window=0.01)
    poller.add(ours.fileno(), lambda: None)
    calls: list[int] = []

    def hook() -> None:
        calls.append(1)

    poller.add_idle(hook)
    poller.before_io_wait(0.05)
    assert calls
    poller.remove_idle(hook)
    calls.clear()
    poller.before_io_wait(0.05)
    assert not calls
    poller._epoll.close()
