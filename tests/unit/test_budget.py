"""The byte budgets of command buffers: all or nothing, in turn, per session and in all."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from blockbridge_target.budget import BufferLimits, ServerBudget, SessionBudget

from blockbridge.iscsi.window import Admission, CommandWindow

MiB = 1 << 20


def budgets(server: int = 100, *sessions: int) -> tuple[ServerBudget, list[SessionBudget]]:
    top = ServerBudget(server)
    return top, [top.session(n) for n in sessions]


def test_try_take_is_all_or_nothing_at_both_levels() -> None:
    top, (a, b) = budgets(100, 60, 60)
    assert a.try_take(60)
    assert not a.try_take(1)  # the session's share is used up
    assert not b.try_take(41)  # the server's is: nothing is taken from b either
    assert (a.used, b.used, top.used) == (60, 0, 60)
    assert b.try_take(40)
    a.give(60)
    b.give(40)
    assert (a.used, b.used, top.used) == (0, 0, 0)


def test_fits_is_the_largest_request_that_can_ever_be_granted() -> None:
    _top, (a,) = budgets(100, 50)
    assert a.fits(50) and not a.fits(51)


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        ServerBudget(0)
    with pytest.raises(ValueError):
        BufferLimits(server_budget=16 * MiB, session_budget=32 * MiB)
    with pytest.raises(ValueError):
        BufferLimits(data_out_timeout=0)


async def test_waiters_are_served_in_turn_and_a_newcomer_does_not_jump_the_queue() -> None:
    top, (a, b) = budgets(100, 100, 100)
    assert a.try_take(90)
    order: list[str] = []

    async def want(budget: SessionBudget, size: int, name: str) -> None:
        await budget.take(size)
        order.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(want, b, 50, "big")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(want, b, 5, "small")
        await trio.testing.wait_all_tasks_blocked()
        assert order == []  # 5 bytes are free, but "big" came first
        assert not a.try_take(5)  # nor does the reader loop take them past the waiters
        a.give(90)
    assert sorted(order) == ["big", "small"]  # granted together, in turn
    assert top.used == 55 and b.used == 55


async def test_a_session_at_its_limit_does_not_hold_up_the_others() -> None:
    top, (greedy, other) = budgets(100, 40, 40)
    assert greedy.try_take(40)
    got: list[str] = []

    async def want(budget: SessionBudget, size: int, name: str) -> None:
        await budget.take(size)
        got.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(want, greedy, 10, "greedy")  # waits for its own session
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(want, other, 10, "other")
        await trio.testing.wait_all_tasks_blocked()
        assert got == ["other"]
        greedy.give(40)
    assert got == ["other", "greedy"]
    assert top.used == 20


async def test_a_cancelled_wait_leaves_nothing_reserved_and_wakes_those_behind() -> None:
    top, (a, b) = budgets(100, 100, 100)
    assert a.try_take(60)
    with trio.move_on_after(0.01):
        await b.take(50)  # never granted: the deadline ends the wait
    assert b.used == 0 and top.used == 60 and top.waiting == 0

    got: list[int] = []
    big = trio.CancelScope()

    async def want(size: int, scope: trio.CancelScope) -> None:
        with scope:
            await b.take(size)
            got.append(size)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(want, 50, big)  # 40 bytes free: it waits at the head
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(want, 30, trio.CancelScope())  # would fit, waits behind it
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        big.cancel()  # the head gives up: the one behind it is granted
    assert got == [30]
    assert top.used == 90 and b.used == 30 and top.waiting == 0


async def test_closing_a_session_returns_what_it_held_to_the_server() -> None:
    top, (a, b) = budgets(100, 100, 100)
    assert a.try_take(70)
    granted = trio.Event()

    async def want() -> None:
        await b.take(50)
        granted.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(want)
        await trio.testing.wait_all_tasks_blocked()
        a.close()  # its connection is gone (unsent answers dropped with it)
        await granted.wait()
    assert top.used == 50
    a.give(70)  # its tasks ending later do not give the server the bytes twice
    assert top.used == 50
    assert not a.try_take(1)


def test_the_command_window_never_offers_more_than_its_depth() -> None:
    w = CommandWindow(expcmdsn=10, depth=2)
    assert w.maxcmdsn == 11
    for sn in (10, 11):
        assert w.classify(sn) is Admission.NOW
        w.advance()
        w.in_flight += 1
    assert w.maxcmdsn == 11  # closed: ExpCmdSN 12 - 1
    assert w.classify(12) is Admission.DROP  # an initiator ignoring MaxCmdSN gets no third task
    w.in_flight -= 1
    assert w.maxcmdsn == 12 and w.classify(12) is Admission.NOW
    w.in_flight -= 1
    assert w.maxcmdsn == 13
    w.in_flight += 2  # MaxCmdSN once offered is never taken back
    assert w.maxcmdsn == 13
