"""Serving descriptors from trio's idle moments: ``Poller``.

The initiator's sessions and the FUSE engine hand it their sockets and /dev/fuse, so
that at depth 1 a request and its answer are each handled where trio would otherwise
only wait, without a task switch.
"""

from __future__ import annotations

import collections
import contextlib
import select
import sys
from collections.abc import Callable, Sized

import trio


def _nothing() -> None:
    pass


class Poller(trio.abc.Instrument):
    """Serves several descriptors through handlers that run synchronously when trio's
    loop would otherwise sleep, without a pass of trio's scheduler per wake-up.

    It is a trio instrument: just before trio waits for I/O with nothing to run, the
    poller waits instead, in an epoll of its own that holds its descriptors and trio's
    epoll, and calls the handlers of what is ready, again and again, until one of them
    wakes a task, trio's deadline comes, or something trio waits for (another socket, a
    signal, a thread handing back a result) is ready; then it lets trio's wait return at
    once.  A FUSE request and the target's answer so cost one ``epoll_wait`` each, not a
    pass of the scheduler and a task switch each.  While trio has tasks to run, every
    pass still serves the descriptors that are ready, without waiting.

    trio does not publish its epoll: ``create()`` returns None where it is not found
    (another trio, another platform), and callers keep to trio's own waiting.  While a
    poller runs, trio never finds itself idle with nothing ready (the poller wakes its
    wait when it has waited), so ``trio.testing.wait_all_tasks_blocked`` and an
    autojumping clock do not work then."""

    current: trio.lowlevel.RunVar[Poller | None] = trio.lowlevel.RunVar(
        "blockbridge_poller", default=None)

    def __init__(self, trio_fd: int, runq: Sized | None = None) -> None:
        self._epoll = select.epoll()
        self._runq = runq  # trio's queue of tasks ready to run, where it is found
        self._trio_fd = trio_fd
        self._epoll.register(trio_fd, select.EPOLLIN)
        self._handlers: dict[int, Callable[[], None]] = {}
        self._detach: dict[int, Callable[[], None]] = {}
        self._idle: Callable[[], None] = _nothing
        self._done = trio.Event()
        self._failure: BaseException | None = None
        self._token = trio.lowlevel.current_trio_token()

    @classmethod
    def create(cls) -> Poller | None:
        """A poller for the running trio loop, or None where trio's epoll is not found."""
        run = sys.modules.get("trio._core._run")
        runner = getattr(getattr(run, "GLOBAL_RUN_CONTEXT", None), "runner", None)
        epoll = getattr(getattr(runner, "io_manager", None), "_epoll", None)
        if not isinstance(epoll, select.epoll) or epoll.closed:
            return None
        runq = getattr(runner, "runq", None)
        return cls(epoll.fileno(), runq if isinstance(runq, collections.deque) else None)

    def add(self, fd: int, handler: Callable[[], None],
            detach: Callable[[], None] = _nothing) -> None:
        """Call ``handler()`` whenever ``fd`` is readable (it must not block, and must
        not need a task of its own: it runs outside every task); ``detach()`` once the
        poller stops while ``fd`` is still watched."""
        self._epoll.register(fd, select.EPOLLIN)
        self._handlers[fd] = handler
        self._detach[fd] = detach

    def remove(self, fd: int, handler: Callable[[], None] | None = None) -> None:
        """Stop watching ``fd`` (only if its handler is ``handler``, when given: the
        number may belong to a new descriptor by now)."""
        current = self._handlers.get(fd)
        if current is None or (handler is not None and current is not handler):
            return
        del self._handlers[fd], self._detach[fd]
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(fd)

    def stop(self) -> None:
        self._done.set()

    async def run(self, idle: Callable[[], None] = _nothing) -> None:
        """Serve until ``stop()`` or until a handler raises (raised here); ``idle()``
        runs before every wait (to send what the handlers queued)."""
        self._idle = idle
        token = Poller.current.set(self)
        trio.lowlevel.add_instrument(self)
        try:
            await self._done.wait()
        finally:
            with contextlib.suppress(KeyError):
                trio.lowlevel.remove_instrument(self)
            Poller.current.reset(token)
            detach = list(self._detach.values())
            for fd in list(self._handlers):
                self.remove(fd)
            for fn in detach:
                fn()
            self._epoll.close()
        if self._failure is not None:
            raise self._failure

    def before_io_wait(self, timeout: float) -> None:
        if self._done.is_set():
            return
        try:
            if not self._serve(timeout):
                return
        except BaseException as exc:  # trio would drop an instrument that raises
            self._failure = exc
            self._done.set()
        self._token.run_sync_soon(_nothing)  # trio's own wait returns at once

    def _serve(self, timeout: float) -> bool:
        """True if trio must not wait: time has passed, or a task is ready."""
        poll, handlers, trio_fd = self._epoll.poll, self._handlers, self._trio_fd
        clock = trio.current_time
        runq = self._runq

        def runnable() -> int:  # current_statistics() costs about 3 µs
            return len(runq) if runq is not None else \
                trio.lowlevel.current_statistics().tasks_runnable
        if timeout <= 0:
            for fd, _ in poll(0):
                handler = handlers.get(fd)
                if handler is not None:
                    handler()
            return False
        deadline = clock() + timeout
        while True:
            self._idle()
            left = deadline - clock()
            if left <= 0:
                return True
            for fd, _ in poll(min(left, 60.0)):
                if fd == trio_fd:
                    return True
                handler = handlers.get(fd)
                if handler is not None:
                    handler()
            if self._done.is_set() or runnable():
                return True
