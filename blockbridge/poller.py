"""Serving hot descriptors between trio's passes: ``Poller``.

The mount hands it /dev/fuse and its sessions' sockets, the target its connections'
sockets and the eventfds of its io_uring rings.  At low queue depth each request and
each answer otherwise costs a wake-up of trio's loop, a pass of its scheduler and a task
switch; the poller handles them where trio would only have waited, synchronously, and
trio's loop turns only when a task has something to do.
"""

from __future__ import annotations

import contextlib
import select
from collections.abc import Callable, Iterator

import trio

WINDOW = 0.002  # seconds the poller waits for its descriptors before trio waits for all
BUSY_LIMIT = 0.02  # seconds it serves without a pass of trio's loop, at most


def _nothing() -> None:
    pass


class Poller(trio.abc.Instrument):
    """Serves descriptors through handlers that run synchronously, outside every task.

    The descriptors are in an epoll of the poller's own, which a task (``run``) waits
    for in trio's epoll like any descriptor: the slow path costs what a reader task
    costs.  The fast path is a trio instrument: when trio is about to wait for I/O with
    no task to run, the poller first waits in its own epoll, for at most ``WINDOW``, and
    calls the handlers of what is ready, again and again, while answers keep coming.
    At depth 1 a request and its answer are so handled back to back without trio's
    loop.  It gives the loop back once a handler made a task runnable, once trio's next
    deadline comes (or ``BUSY_LIMIT`` passed, so that what trio alone watches gets its
    turn), or after a ``WINDOW`` without events; those other descriptors (a control
    connection, a worker thread's result) wait for at most that long.

    Handlers must not block.  A handler that raises stops the poller, and ``run``
    raises its exception.  Only public trio interfaces are used; trio's idle detection
    (``wait_all_tasks_blocked``, autojump clocks) does not see the poller's waits, so
    tests that rely on it run without one."""

    current: trio.lowlevel.RunVar[Poller | None] = trio.lowlevel.RunVar(
        "blockbridge_poller", default=None)

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._epoll = select.epoll()
        self._handlers: dict[int, Callable[[], None]] = {}
        self._detach: dict[int, Callable[[], None]] = {}
        self._idle_hooks: list[Callable[[], None]] = []
        self._elsewhere = 0  # waits in progress that only trio sees (threads, other fds)
        self._scope = trio.CancelScope()
        self._stopped = False
        self._failure: BaseException | None = None
        self._token = trio.lowlevel.current_trio_token()

    def add(self, fd: int, handler: Callable[[], None],
            detach: Callable[[], None] = _nothing) -> None:
        """Call ``handler()`` whenever ``fd`` is readable; ``detach()`` if the poller
        stops while ``fd`` is still watched."""
        self._epoll.register(fd, select.EPOLLIN)
        self._handlers[fd] = handler
        self._detach[fd] = detach

    def remove(self, fd: int, handler: Callable[[], None] | None = None) -> None:
        """Stop watching ``fd`` (only if ``handler`` is still its handler, if given);
        before the descriptor is closed."""
        current = self._handlers.get(fd)
        if current is None or (handler is not None and current is not handler):
            return
        del self._handlers[fd], self._detach[fd]
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(fd)

    def add_idle(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` before every wait: to send or submit what the handlers queued
        (as trio's other ``before_io_wait`` instruments would)."""
        self._idle_hooks.append(hook)

    def remove_idle(self, hook: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._idle_hooks.remove(hook)

    @contextlib.contextmanager
    def elsewhere(self) -> Iterator[None]:
        """Around a wait that only trio sees (a worker thread, a descriptor of its own):
        meanwhile the poller does not wait before trio does, so that the wait's end is
        not held up by ``WINDOW``."""
        self._elsewhere += 1
        try:
            yield
        finally:
            self._elsewhere -= 1

    def _before_wait(self) -> None:
        for hook in self._idle_hooks:
            hook()

    def stop(self) -> None:
        self._stopped = True
        self._scope.cancel()

    @property
    def running(self) -> bool:
        return not self._stopped

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve until ``stop()`` or until a handler raises (raised here).  Sessions hand
        their sockets over once started (at their next PDU)."""
        token = Poller.current.set(self)
        trio.lowlevel.add_instrument(self)
        task_status.started()
        try:
            with self._scope:
                while not self._stopped:
                    self._before_wait()
                    await trio.lowlevel.wait_readable(self._epoll.fileno())
                    self._serve_ready()
        finally:
            self._stopped = True
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

    def _serve_ready(self) -> None:
        handlers = self._handlers
        for fd, _ in self._epoll.poll(0):
            handler = handlers.get(fd)
            if handler is not None:
                handler()

    # trio calls this just before it waits for I/O; ``timeout`` 0: tasks are ready
    def before_io_wait(self, timeout: float) -> None:
        if self._stopped or timeout <= 0 or not self._handlers or self._elsewhere:
            return
        try:
            wake = self._serve(min(timeout, BUSY_LIMIT))
        except BaseException as exc:  # trio would drop an instrument that raises
            self._failure = exc
            self.stop()
            wake = True
        if wake:
            self._token.run_sync_soon(_nothing)  # trio's own wait returns at once

    def _serve(self, limit: float) -> bool:
        """Serve for up to ``limit`` seconds; True if trio must not sleep now (a task is
        ready, or time passed that trio's timeout did not count)."""
        poll, handlers, window = self._epoll.poll, self._handlers, self.window
        clock = trio.current_time
        statistics = trio.lowlevel.current_statistics
        deadline = clock() + limit
        served = False
        while True:
            self._before_wait()
            left = deadline - clock()
            if left <= 0:
                return True
            events = poll(min(left, window))
            if not events:
                return served
            for fd, _ in events:
                handler = handlers.get(fd)
                if handler is not None:
                    handler()
            served = True
            if self._stopped or self._elsewhere or statistics().tasks_runnable:
                return True


class Lease:
    """A descriptor lent to a poller by the task that otherwise reads it: the poller
    calls ``handler`` when it is readable until ``leave()`` (which the handler may call
    itself), or until the poller stops; ``run()`` returns then, and the task takes the
    descriptor back."""

    def __init__(self, poller: Poller, fd: int) -> None:
        self.poller, self.fd = poller, fd
        self.over = trio.Event()
        self._handler: Callable[[], None] | None = None

    def start(self, handler: Callable[[], None]) -> None:
        self._handler = handler
        self.poller.add(self.fd, handler, self.over.set)

    def leave(self) -> None:
        """Take the descriptor back: before it is closed, or when the task must act."""
        if self._handler is not None:
            self.poller.remove(self.fd, self._handler)
        self.over.set()

    async def run(self, handler: Callable[[], None]) -> None:
        """``start(handler)``, then wait until the descriptor is taken back."""
        self.start(handler)
        try:
            await self.over.wait()
        finally:
            self.leave()


def elsewhere() -> contextlib.AbstractContextManager[None]:
    """``Poller.elsewhere()`` of the running poller; nothing where none runs."""
    poller = Poller.current.get()
    return poller.elsewhere() if poller is not None else contextlib.nullcontext()
