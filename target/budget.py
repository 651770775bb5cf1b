"""Byte budgets for command buffers: one for the server, one for each session under it.

Every buffer a command holds while it waits for its peer (write data being collected, read
data answered but not yet sent) is reserved here first.  A reservation is all or nothing
for the command, at both levels at once, so commands that hold part of what they need
cannot block each other.  ``try_take`` is a couple of comparisons for the reader loop;
``take`` waits, in arrival order, until the bytes are free.

Waiters are served first come, first served for the server's budget; a waiter that only
lacks room in its own session's budget does not hold up other sessions, and the later
waiters of its session wait behind it.
"""

from __future__ import annotations

from collections import deque

import trio

MiB = 1 << 20
DEFAULT_SERVER_BUDGET = 256 * MiB
DEFAULT_SESSION_BUDGET = 64 * MiB
DEFAULT_DATA_OUT_TIMEOUT = 30.0


class _Waiter:
    __slots__ = ("budget", "event", "granted", "size")

    def __init__(self, budget: SessionBudget, size: int) -> None:
        self.budget, self.size = budget, size
        self.event = trio.Event()
        self.granted = False


class ServerBudget:
    """The bytes of command buffers all sessions of a server may hold together."""

    def __init__(self, limit: int = DEFAULT_SERVER_BUDGET) -> None:
        if limit <= 0:
            raise ValueError("a budget must be larger than zero")
        self.limit = limit
        self.used = 0
        self._waiters: deque[_Waiter] = deque()
        self._blocked = False  # a waiter lacks room in this budget (not only its session's)

    def session(self, limit: int = DEFAULT_SESSION_BUDGET) -> SessionBudget:
        return SessionBudget(self, limit)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _wake(self) -> None:
        """Grant what now fits, in order; see the module's docstring."""
        passed: set[SessionBudget] = set()
        for w in list(self._waiters):
            b = w.budget
            if b in passed or b.closed:
                continue
            if b.used + w.size > b.limit:
                passed.add(b)  # it waits for its own session; its later ones behind it
                continue
            if self.used + w.size > self.limit:
                self._blocked = True  # first come, first served for the server's bytes
                return
            self._waiters.remove(w)
            b.waiting -= 1
            b.used += w.size
            self.used += w.size
            w.granted = True
            w.event.set()
        self._blocked = False


class SessionBudget:
    """One session's share; every reservation counts in the server's budget too."""

    def __init__(self, server: ServerBudget, limit: int) -> None:
        if limit <= 0:
            raise ValueError("a budget must be larger than zero")
        self.server = server
        self.limit = limit
        self.used = 0
        self.waiting = 0  # of its commands, waiting for bytes
        self.closed = False

    def fits(self, size: int) -> bool:
        """Whether ``size`` bytes could ever be granted (the largest a command may ask)."""
        return size <= self.limit and size <= self.server.limit

    def try_take(self, size: int) -> bool:
        """Reserve ``size`` bytes now if both budgets have them and no command that
        came earlier waits for them (in this session, or for the server's bytes)."""
        s = self.server
        if self.used + size > self.limit or s.used + size > s.limit or s._blocked \
                or self.waiting or self.closed:
            return False
        self.used += size
        s.used += size
        return True

    async def take(self, size: int) -> None:
        """Reserve ``size`` bytes, waiting for them in turn.  Cancelling the wait (a
        deadline, an abort) leaves nothing reserved.  ``size`` must ``fit``."""
        if not self.fits(size):
            raise ValueError(f"{size} bytes exceed the budget")
        if self.try_take(size):
            await trio.lowlevel.checkpoint()
            return
        w = _Waiter(self, size)
        s = self.server
        s._waiters.append(w)
        self.waiting += 1
        s._wake()  # it may fit where the waiters ahead of it do not
        try:
            await w.event.wait()
        except BaseException:
            if w.granted:
                self.give(size)
            else:
                s._waiters.remove(w)
                self.waiting -= 1
                s._wake()  # it may have been holding up the ones behind it
            raise

    def give(self, size: int) -> None:
        """Return bytes reserved with ``try_take`` or ``take``."""
        self.used -= size
        if self.closed:
            return  # close() gave the server its bytes back already
        s = self.server
        s.used -= size
        if s._waiters:
            s._wake()

    def close(self) -> None:
        """The session is gone: give the server back what is still reserved (buffers
        queued for a connection that closed are dropped with it, unsent)."""
        if self.closed:
            return
        self.closed = True
        s = self.server
        s.used -= self.used
        s._waiters = deque(w for w in s._waiters if w.budget is not self)
        self.waiting = 0
        s._wake()


class BufferLimits:
    """What a server's command buffers may use, and how long it waits for Data-Out."""

    __slots__ = ("data_out_timeout", "server_budget", "session_budget")

    def __init__(self, server_budget: int = DEFAULT_SERVER_BUDGET,
                 session_budget: int = DEFAULT_SESSION_BUDGET,
                 data_out_timeout: float = DEFAULT_DATA_OUT_TIMEOUT) -> None:
        if session_budget <= 0 or server_budget <= 0:
            raise ValueError("buffer budgets must be larger than zero")
        if session_budget > server_budget:
            raise ValueError("the session buffer budget cannot exceed the server's")
        if not data_out_timeout > 0:
            raise ValueError("the Data-Out timeout must be larger than zero")
        self.server_budget = server_budget
        self.session_budget = session_budget
        self.data_out_timeout = data_out_timeout
