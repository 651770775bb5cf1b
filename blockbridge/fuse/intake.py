"""Faster request intake for pyfuse3's main loop.

pyfuse3's workers take turns at a lock, and the one holding it waits for the FUSE device
to become readable through trio's epoll before it reads one request.  Even when the kernel
has dozens of requests queued, every request therefore costs a lock hand-over, an
``epoll_ctl`` and a pass of trio's scheduler before it is read: at 32 requests in flight
the mount reads them one by one, a scheduler pass apart.

``install()`` replaces that wait (pyfuse3 looks the function up by name each time) with one
that first asks the device, with a zero-timeout ``poll``, whether a request is ready. A
worker that has just answered a request reads the next one at once; only an idle device
makes a worker wait in trio's epoll.  The read follows the check without a checkpoint, so
no other worker can take the request in between, and a worker woken by epoll checks again,
because a faster worker may have read the request it was woken for: the device is
blocking, and a read of an empty device would stall the event loop.

One worker at a time waits in epoll; the others park on a stack, so the same few workers
serve a light load.  pyfuse3 gives every worker a receive buffer of the largest request
(about 1 MiB), filled as far as each request needs, and frees it when the worker ends, so
a worker that stays idle for ``IDLE_SECONDS`` ends, and at most ``WORKERS`` run: big
writes cannot leave dozens of touched buffers behind.

A worker also yields to the scheduler every ``FAIR_SHARE`` requests, so a stream of
requests that are answered without waiting (attributes, reads past the end) cannot starve
the iSCSI session's tasks.
"""

from __future__ import annotations

import logging
import os
import select

import pyfuse3
import trio

log = logging.getLogger(__name__)

FAIR_SHARE = 16
IDLE_SECONDS = 10.0
WORKERS = 48  # the iSCSI command window (32) and synchronous requests, with room


def fuse_device_fd() -> int | None:
    """The descriptor of this process's /dev/fuse (pyfuse3 does not expose it)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                found.append(int(name))
        except OSError:
            continue
    return found[0] if len(found) == 1 else None


class Intake:
    """The replacement wait; ``close()`` makes every worker stop."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.closed = False
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._streak = 0
        self._polling = False  # one worker waits in epoll; the others are idle
        self._idle: list[trio.Event] = []  # a stack: the last one parked runs first

    def _ready(self) -> bool:
        return bool(self._poll.poll(0))

    async def wait(self) -> bool:
        """True when a request can be read without blocking; False when the loop ends,
        or when this worker has been idle for ``IDLE_SECONDS`` and should stop."""
        if self.closed:
            return False
        if self._streak < FAIR_SHARE and self._ready():
            self._streak += 1
            return True
        self._streak = 0
        if self._polling:
            turn = trio.Event()
            self._idle.append(turn)
            try:
                with trio.move_on_after(IDLE_SECONDS):
                    await turn.wait()
            except BaseException:
                self._leave(turn)
                raise
            if not turn.is_set():  # idle too long: this worker stops, and frees its buffer
                self._idle.remove(turn)
                return False
            # the worker that polled before us handed its turn over: we poll now
        else:
            self._polling = True
            turn = None
        try:
            if turn is None:
                await trio.lowlevel.checkpoint()  # let others run before a fast-path streak
            while not self.closed:
                if self._ready():
                    return True
                await trio.lowlevel.wait_readable(self.fd)
        except trio.ClosedResourceError:
            self.closed = True
        finally:
            self._pass_turn()  # the next idle worker polls, without a gap
        return False

    def _pass_turn(self) -> None:
        if self._idle:
            self._idle.pop().set()
        else:
            self._polling = False

    def _leave(self, turn: trio.Event) -> None:
        """A parked worker is cancelled: give back the turn if it had just been given one."""
        if turn.is_set():
            self._pass_turn()
        else:
            self._idle.remove(turn)

    def close(self) -> None:
        """Stop the workers: the one waiting in epoll is woken by pyfuse3.terminate()."""
        self.closed = True
        while self._idle:
            self._idle.pop().set()


def install() -> Intake | None:
    """Replace pyfuse3's wait, after pyfuse3.init(); None (and a log line saying why) if
    this pyfuse3 lacks the function the replacement is written for, or the device
    cannot be found."""
    if not hasattr(pyfuse3, "_wait_fuse_readable"):
        why = f"pyfuse3 {pyfuse3.__version__} has no _wait_fuse_readable"
    elif (fd := fuse_device_fd()) is None:
        why = "no single /dev/fuse descriptor in /proc/self/fd"
    else:
        intake = Intake(fd)
        setattr(pyfuse3, "_wait_fuse_readable", intake.wait)  # noqa: B010 (a private name)
        return intake
    log.info("FUSE requests are read with pyfuse3's own, slower loop (%s)", why)
    return None
