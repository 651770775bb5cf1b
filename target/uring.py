"""File I/O through io_uring, completed on the trio event loop without threads.

A read that misses the page cache has to wait for the disk.  Handing it to a worker
thread costs more than the disk here: each completion has to take the GIL back from the
event loop, and on a small VM every such hand-over is a pair of context switches
(about 150-250 µs of CPU per 4 KiB read in all).  With io_uring the event loop queues
the read, the kernel does it asynchronously, and a completion costs a few microseconds.

One ring per logical unit, driven through the system calls by ``uring_abi``.  An
operation writes its submission entry into the ring at once; every entry written during
one pass of the event loop goes to the kernel in a single ``io_uring_enter``, made just
before trio waits for I/O (a trio instrument's ``before_io_wait``).  Completions are
signalled on an eventfd that a trio system task waits on; per wake-up it takes every
completion in the ring, reschedules each finished task, or calls the completion callback
of an operation started with ``start_read`` (which no task waits for).

A buffer is passed to the kernel by address: the operation holds a ctypes export of the
``bytearray`` (which also keeps it from being resized) until its completion is reaped,
then lets go of it.  Where the kernel refuses io_uring (old kernels,
``kernel.io_uring_disabled``, seccomp filters in containers), ``open_uring`` says why
once and the caller keeps using threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
from collections.abc import Callable

import outcome
import trio

from blockbridge.poller import Lease, Poller

from . import uring_abi as abi

log = logging.getLogger(__name__)

ENTRIES = 256  # submission queue size; the completion queue is twice as large

# A completion callback may return a follow-up: each distinct one runs once, after every
# completion of the batch was delivered (to write many answers in one system call).
FollowUp = Callable[[], None]
Done = Callable[[outcome.Outcome[int]], FollowUp | None]
Waiter = trio.lowlevel.Task | Done


class UringUnavailable(Exception):
    """io_uring cannot be used here; the message says why."""


def _wait_forever(_raise_cancel: object) -> trio.lowlevel.Abort:
    # A submitted operation cannot be taken back from the kernel cheaply, and its buffer
    # must stay alive until it completes: the caller waits for it, as it would for a
    # thread.  Operations on local files finish in bounded time.
    return trio.lowlevel.Abort.FAILED


def _whole(buf: bytearray) -> bytearray:
    if type(buf) is not bytearray:
        raise TypeError(f"io_uring buffers must be bytearrays, not {type(buf).__name__}")
    return buf


def outcome_of(res: int) -> outcome.Outcome[int]:
    """A completion's result: the byte count, or the OSError of a negative errno."""
    if res >= 0:
        return outcome.Value(res)
    return outcome.Error(OSError(-res, os.strerror(-res)))


class _Submitter(trio.abc.Instrument):
    """Submits what a pass of the event loop queued, once, before trio waits for I/O."""

    def __init__(self, ring: Uring) -> None:
        self.ring = ring

    def before_io_wait(self, timeout: float) -> None:
        if self.ring._queued:
            try:
                self.ring._submit()
            except Exception:  # pragma: no cover - trio would drop the instrument
                log.exception("io_uring submission failed")


class Uring:
    """An io_uring bound to the current trio run (see ``open_uring``)."""

    def __init__(self) -> None:
        try:
            self._ring = abi.Ring(ENTRIES)
        except OSError as exc:
            raise UringUnavailable(f"the kernel refused io_uring: {exc.strerror}") from None
        except ValueError as exc:
            raise UringUnavailable(str(exc)) from None
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            self._ring.register_eventfd(self._efd)
        except OSError as exc:
            self._ring.close()
            self._close_eventfd()
            raise UringUnavailable(f"io_uring eventfd: {exc.strerror}") from None
        self._queues = self._ring.queues
        # user_data -> (waiting task or completion callback, the export of the buffer the
        # kernel reads or writes until completion)
        self._pending: dict[int, tuple[Waiter, object]] = {}
        self._failed: list[tuple[int, int, int]] = []  # taken back unsubmitted: reap them
        self._queued = 0  # entries written since the last submission
        self._next_key = 1
        self._room = trio.lowlevel.ParkingLot()  # tasks waiting for a free slot
        self.token = trio.lowlevel.current_trio_token()
        self._closed = False
        self._lease: Lease | None = None  # while a poller serves the eventfd
        self._submitter = _Submitter(self)
        trio.lowlevel.add_instrument(self._submitter)
        # A poller that waits before trio does must submit first, as the instrument does.
        self._poller = Poller.current.get()
        if self._poller is not None:
            self._poller.add_idle(self._submit_queued)
        trio.lowlevel.spawn_system_task(self._reap, name="io_uring completions")

    # ------------------------------------------------------------------ operations

    async def read(self, fd: int, buf: bytearray, offset: int) -> int:
        """Read into all of ``buf`` at ``offset``; returns the byte count (short at end
        of file)."""
        return await self._wait(abi.IORING_OP_READ, fd, offset, _whole(buf), 0)

    async def write(self, fd: int, data: bytearray, offset: int) -> int:
        """Write all of ``data`` at ``offset``; returns the byte count (may be short)."""
        return await self._wait(abi.IORING_OP_WRITE, fd, offset, _whole(data), 0)

    async def fdatasync(self, fd: int) -> None:
        await self._wait(abi.IORING_OP_FSYNC, fd, 0, None, abi.IORING_FSYNC_DATASYNC)

    def start_read(self, fd: int, buf: bytearray, offset: int,
                   done: Done) -> bool:
        """Start a read into all of ``buf`` and return at once; ``done`` is called on
        the event loop with its outcome (the byte count, or the OSError), and what it
        returns runs after the batch of completions it came with.  False, with nothing
        started, when the ring is full or closed."""
        if self._closed or len(self._pending) >= ENTRIES:
            return False
        self._queue(abi.IORING_OP_READ, fd, offset, _whole(buf), 0, done)
        return True

    async def _wait(self, opcode: int, fd: int, offset: int, buf: bytearray | None,
                    op_flags: int) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("io_uring is closed")
        while len(self._pending) >= ENTRIES:
            await self._room.park()
            if self._closed:
                raise trio.ClosedResourceError("io_uring is closed")
        self._queue(opcode, fd, offset, buf, op_flags, trio.lowlevel.current_task())
        res: int = await trio.lowlevel.wait_task_rescheduled(_wait_forever)
        return res

    def _queue(self, opcode: int, fd: int, offset: int, buf: bytearray | None,
               op_flags: int, waiter: Waiter) -> None:
        # The export lives in the pending table only (no frame that a traceback could
        # keep holds it), so the buffer is let go with the completion.
        held = ctypes.c_char.from_buffer(buf) if buf else None
        key = self._next_key
        self._next_key = key + 1 if key < 1 << 62 else 1
        self._queues.push(opcode, fd, offset, ctypes.addressof(held) if held is not None else 0,
                          len(buf) if buf else 0, op_flags, key)
        self._pending[key] = (waiter, held)
        self._queued += 1  # submitted before trio next waits for I/O

    def _submit_queued(self) -> None:
        if self._queued:
            self._submit()

    def _submit(self) -> None:
        """Give the kernel every queued entry; entries it cannot take fail with the
        reason (they are reaped as completions, by the reaper task)."""
        self._queued = 0
        try:
            while self._ring.submit():
                pass
            if not self._queues.unsubmitted():
                return
            code = errno.EAGAIN
        except OSError as exc:
            code = exc.errno or errno.EIO
        self._failed += [(key, -code, 0) for key in self._queues.take_back()]
        os.eventfd_write(self._efd, 1)  # the reaper delivers them on a task

    # ------------------------------------------------------------------ completions

    async def _reap(self) -> None:
        try:
            while not (self._closed and not self._pending):
                poller = Poller.current.get()
                if poller is not None and poller.running and not self._closed:
                    await self._polled(poller)
                    continue
                await trio.lowlevel.wait_readable(self._efd)
                self._reap_now()
        except (trio.ClosedResourceError, trio.Cancelled):
            pass  # closed, or the trio run is ending
        finally:
            # The ring and its eventfd are released here, after trio has forgotten the
            # fd: closing it earlier could hand its number to a new ring while trio
            # still has the old registration.
            self._release()

    def _reap_now(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._efd)
        self._complete()

    async def _polled(self, poller: Poller) -> None:
        """Leave the eventfd to ``poller`` (which also serves the sockets, so a
        completion is answered without a pass of trio's loop) until it stops or the ring
        closes."""
        self._lease = lease = Lease(poller, self._efd)

        def readable() -> None:
            self._reap_now()
            if self._closed and not self._pending:
                lease.leave()

        try:
            await lease.run(readable)
        finally:
            self._lease = None

    def _complete(self) -> None:
        """Finish every operation whose completion is in the ring."""
        pending = self._pending
        follow_ups: dict[FollowUp, None] = {}  # in order, each once
        while True:
            done = self._queues.reap()
            if self._failed:
                done += self._failed
                self._failed = []
            if not done:
                break
            for key, res, _flags in done:
                entry = pending.pop(key, None)
                if entry is None:
                    continue
                waiter = entry[0]
                result = outcome_of(res)
                if isinstance(waiter, trio.lowlevel.Task):
                    trio.lowlevel.reschedule(waiter, result)
                else:
                    try:
                        follow_up = waiter(result)
                    except Exception:  # a bug in the callback must not stop reaping
                        log.exception("io_uring completion callback failed")
                    else:
                        if follow_up is not None:
                            follow_ups[follow_up] = None
                del entry, waiter, result  # hold no buffer until the next completion
        for follow_up in follow_ups:
            try:
                follow_up()
            except Exception:
                log.exception("io_uring completion follow-up failed")
        if self._room.statistics().tasks_waiting:
            self._room.unpark(count=ENTRIES - len(pending))

    def close(self) -> None:
        """Refuse new operations and release the ring once those in flight are done
        (at once where nothing is: the logical unit has drained)."""
        if self._closed:
            return
        self._closed = True
        self._room.unpark_all()
        try:
            same_run = trio.lowlevel.current_trio_token() is self.token
        except RuntimeError:
            same_run = False
        if not same_run:
            self._release()  # the run and its reaper task are gone
        elif not self._pending:
            trio.lowlevel.notify_closing(self._efd)  # the reaper wakes up and releases
            if self._lease is not None:
                self._lease.leave()
        # else the reaper releases the ring after the last completion

    def _release(self) -> None:
        """Close the ring.  Operations still in flight (a run that ended under them)
        are waited for first, so the kernel writes into no buffer that was let go; their
        waiters are not told."""
        if self._efd < 0:
            return
        self._closed = True
        queues, pending = self._queues, self._pending
        self._queued = 0
        never_submitted = queues.take_back() + [key for key, _res, _fl in self._failed]
        self._failed.clear()
        for key in never_submitted:
            pending.pop(key, None)
        try:
            while True:
                for key, _res, _flags in queues.reap():
                    pending.pop(key, None)
                if not pending:
                    break
                self._ring.wait(1)
        except OSError as exc:  # pragma: no cover - the kernel failed the wait
            log.error("io_uring closed with %d operations in flight: %s", len(pending), exc)
            return  # leak the ring rather than free memory the kernel may still write
        with contextlib.suppress(RuntimeError, KeyError):
            if trio.lowlevel.current_trio_token() is self.token:
                trio.lowlevel.remove_instrument(self._submitter)
                if self._poller is not None:
                    self._poller.remove_idle(self._submit_queued)
                trio.lowlevel.notify_closing(self._efd)
        self._ring.close()
        self._close_eventfd()

    def _close_eventfd(self) -> None:
        os.close(self._efd)
        self._efd = -1


_refused: str | None = None  # why io_uring is unavailable, once known


def open_uring() -> Uring | None:
    """A ring for the running trio loop, or None (logged once) if io_uring is unusable."""
    global _refused
    if _refused is not None:
        return None
    try:
        return Uring()
    except UringUnavailable as exc:
        _refused = str(exc)
        log.warning("file I/O uses worker threads: %s", _refused)
        return None
