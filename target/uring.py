"""File I/O through io_uring, completed on the trio event loop without threads.

A read that misses the page cache has to wait for the disk.  Handing it to a worker
thread costs more than the disk here: each completion has to take the GIL back from the
event loop, and on a small VM every such hand-over is a pair of context switches
(about 150-250 µs of CPU per 4 KiB read in all).  With io_uring the event loop queues
the read, the kernel does it asynchronously, and a completion costs a few microseconds:
a single Python thread reads 50k random 4 KiB blocks per second from a cold file here.

One ring per logical unit.  Completions are signalled on an eventfd that a trio system
task waits on; in one pass it reschedules every finished task, or calls the completion
callback of an operation started with ``start_read`` (which no task waits for).

The Python binding is the ``liburing`` package.  Where it is missing or the kernel refuses
io_uring (old kernels, ``kernel.io_uring_disabled``, seccomp filters in containers),
``open_uring`` says why and the caller keeps using threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import outcome
import trio

log = logging.getLogger(__name__)

_lu: Any
try:
    import liburing as _lu  # type: ignore[import-untyped,no-redef]
except ImportError:  # pragma: no cover - liburing is a dependency; this is a safety net
    _lu = None

ENTRIES = 256  # submission queue size; the completion queue is twice as large


class UringUnavailable(Exception):
    """io_uring cannot be used here; the message says why."""


def _wait_forever(_raise_cancel: Any) -> trio.lowlevel.Abort:
    # A submitted operation cannot be taken back from the kernel cheaply, and its buffer
    # must stay alive until it completes: the caller waits for it, as it would for a
    # thread.  Operations on local files finish in bounded time.
    return trio.lowlevel.Abort.FAILED


def _iovec(buf: bytearray) -> Any:
    # Only whole bytearrays go to the binding: liburing's Iovec keeps the buffer export
    # of a memoryview for ever (the view's memory is never freed), which leaked about
    # 15 MiB/s under load; with a bytearray it does not.
    if type(buf) is not bytearray:
        raise TypeError(f"io_uring buffers must be bytearrays, not {type(buf).__name__}")
    return _lu.Iovec([buf])


def _result_of(entry: Any) -> int:
    res: int = entry.res  # a negative result raises the matching OSError
    return res


class Uring:
    """An io_uring bound to the current trio run (see ``open_uring``)."""

    def __init__(self) -> None:
        if _lu is None:
            raise UringUnavailable("the liburing Python package is not installed")
        self._ring = _lu.Ring()
        try:
            _lu.io_uring_queue_init(ENTRIES, self._ring)
        except OSError as exc:
            raise UringUnavailable(f"the kernel refused io_uring: {exc.strerror}") from None
        self._cqe = _lu.Cqe()
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            _lu.io_uring_register_eventfd(self._ring, self._efd)
        except OSError as exc:
            _lu.io_uring_queue_exit(self._ring)
            self._close_eventfd()
            raise UringUnavailable(f"io_uring eventfd: {exc.strerror}") from None
        # user_data -> (waiting task or completion callback, objects the kernel reads or
        # writes until completion)
        self._pending: dict[int, tuple[trio.lowlevel.Task | Callable[[outcome.Outcome[int]],
                                                                     None], object]] = {}
        self._next_key = 1
        self._room = trio.lowlevel.ParkingLot()  # tasks waiting for a free slot
        self.token = trio.lowlevel.current_trio_token()
        self._closed = False
        trio.lowlevel.spawn_system_task(self._reap, name="io_uring completions")

    # ------------------------------------------------------------------ operations

    async def read(self, fd: int, buf: bytearray, offset: int) -> int:
        """Read into all of ``buf`` at ``offset``; returns the byte count (short at end
        of file)."""
        iov = _iovec(buf)
        return await self._submit(_lu.io_uring_prep_readv, fd, iov, offset, keep=(iov, buf))

    async def write(self, fd: int, data: bytearray, offset: int) -> int:
        """Write all of ``data`` at ``offset``; returns the byte count (may be short)."""
        iov = _iovec(data)
        return await self._submit(_lu.io_uring_prep_writev, fd, iov, offset, keep=(iov, data))

    async def fdatasync(self, fd: int) -> None:
        await self._submit(_lu.io_uring_prep_fsync, fd, _lu.IORING_FSYNC_DATASYNC, keep=None)

    def start_read(self, fd: int, buf: bytearray, offset: int,
                   done: Callable[[outcome.Outcome[int]], None]) -> bool:
        """Start a read into all of ``buf`` and return at once; ``done`` is called on
        the event loop with its outcome (the byte count, or the OSError).  False, with
        nothing started, when the ring is full or closed."""
        if self._closed or len(self._pending) >= ENTRIES:
            return False
        iov = _iovec(buf)
        self._queue(_lu.io_uring_prep_readv, (fd, iov, offset), done, (iov, buf))
        return True

    async def _submit(self, prep: Any, *args: Any, keep: object) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("io_uring is closed")
        while len(self._pending) >= ENTRIES:
            await self._room.park()
        self._queue(prep, args, trio.lowlevel.current_task(), keep)
        res: int = await trio.lowlevel.wait_task_rescheduled(_wait_forever)
        return res

    def _queue(self, prep: Any, args: tuple[Any, ...],
               waiter: trio.lowlevel.Task | Callable[[outcome.Outcome[int]], None],
               keep: object) -> None:
        sqe = _lu.io_uring_get_sqe(self._ring)
        if sqe is None:  # cannot happen: every prepared entry is submitted at once
            raise OSError("io_uring submission queue full")
        prep(sqe, *args)
        key = self._next_key
        self._next_key = key + 1 if key < 1 << 62 else 1
        sqe.user_data = key
        self._pending[key] = (waiter, keep)
        try:
            _lu.io_uring_submit(self._ring)
        except BaseException:
            del self._pending[key]
            raise

    # ------------------------------------------------------------------ completions

    async def _reap(self) -> None:
        ring, cqe, pending = self._ring, self._cqe, self._pending
        try:
            while True:
                await trio.lowlevel.wait_readable(self._efd)
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self._efd)
                while True:
                    try:
                        _lu.io_uring_peek_cqe(ring, cqe)
                    except BlockingIOError:
                        break
                    entry = cqe[0]
                    key = entry.user_data
                    result = outcome.capture(_result_of, entry)
                    _lu.io_uring_cqe_seen(ring, entry)
                    waiter = pending.pop(key, None)
                    if waiter is None:
                        pass
                    elif isinstance(waiter[0], trio.lowlevel.Task):
                        trio.lowlevel.reschedule(waiter[0], result)
                    else:
                        try:
                            waiter[0](result)
                        except Exception:  # a bug in the callback must not stop reaping
                            log.exception("io_uring completion callback failed")
                    del waiter, result  # hold no buffer until the next completion
                if self._room.statistics().tasks_waiting:
                    self._room.unpark(count=ENTRIES - len(pending))
        except (trio.ClosedResourceError, trio.Cancelled):
            pass  # closed, or the trio run is ending
        finally:
            # The ring and its eventfd are released here, after trio has forgotten the
            # fd: closing it earlier could hand its number to a new ring while trio
            # still has the old registration.
            self._release()

    def close(self) -> None:
        """Release the ring; nothing may be in flight (the logical unit has drained)."""
        if self._closed:
            return
        self._closed = True
        if self._pending:  # pragma: no cover - a bug in the caller
            log.error("io_uring closed with %d operations in flight", len(self._pending))
            return  # leak the ring rather than free memory the kernel may still write
        try:
            same_run = trio.lowlevel.current_trio_token() is self.token
        except RuntimeError:
            same_run = False
        if same_run:
            trio.lowlevel.notify_closing(self._efd)  # the reaper wakes up and releases
        else:
            self._release()  # the run and its reaper task are gone

    def _release(self) -> None:
        if self._efd >= 0:
            _lu.io_uring_queue_exit(self._ring)
            self._close_eventfd()

    def _close_eventfd(self) -> None:
        os.close(self._efd)
        self._efd = -1


_refused: str | None = None  # why io_uring is unavailable, once known
_probed = False
_PROBE = ("import liburing as u; r = u.Ring(); u.io_uring_queue_init(8, r); "
          "u.io_uring_queue_exit(r)")


def _probe_binding() -> None:
    """Raise UringUnavailable if the binding kills the process that uses it.

    The liburing wheel is compiled code that may use instructions this CPU lacks: its
    first ring then dies with SIGILL, which no ``except`` can catch.  A child process
    tries it once, before this process does."""
    if _lu is None:
        raise UringUnavailable("the liburing Python package is not installed")
    try:
        child = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True,
                               timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UringUnavailable(f"the liburing probe did not run: {exc}") from None
    if child.returncode < 0:
        name = signal.Signals(-child.returncode).name
        raise UringUnavailable(f"the liburing binding dies with {name} on this machine "
                               "(compiled for another CPU)")


def open_uring() -> Uring | None:
    """A ring for the running trio loop, or None (logged once) if io_uring is unusable."""
    global _refused, _probed
    if _refused is not None:
        return None
    try:
        if not _probed:
            _probe_binding()
            _probed = True
        return Uring()
    except UringUnavailable as exc:
        _refused = str(exc)
        log.warning("file I/O uses worker threads: %s", _refused)
        return None
