"""Read-ahead for a sequential reader of a LUN file that did not ask for O_DIRECT.

LUN files are opened ``direct_io``: the kernel keeps no copy of LUN data, so it reads
nothing ahead either, and a program that reads a file from start to end (``cp``, ``dd``,
``qemu-img convert``, a backup tool) waits for the target once per request.  Here, once
two reads in a row follow each other, the next one is asked of the target before the
program asks for it, so its wait overlaps the program's own work.

One read is kept ahead per LUN file, for at most ``KEEP`` seconds, and only for readers
without O_DIRECT (a loop device with direct I/O, qemu with ``cache=none`` and fio's
``direct=1`` get exactly what they ask for).  Any write, discard or resize through the
mount drops what was read ahead and not yet asked for; so do a read elsewhere and the
closing of the file.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from blockbridge.initiator.blockdev import BlockDevice, ReadDone, Started

MIN_READ = 64 << 10  # smaller reads are not followed
KEEP = 1.0  # seconds data read ahead may wait for its reader


def _nothing() -> None:
    pass


class _Ahead:
    """One read started before it was asked for."""

    def __init__(self, offset: int, length: int) -> None:
        self.offset, self.length = offset, length
        self.view: memoryview | None = None
        self.release: Callable[[], None] = _nothing
        self.arrived = 0.0  # time.monotonic() of its arrival; 0 while in flight
        self.failed = False
        self.waiter: ReadDone | None = None  # a read asked for meanwhile, answered on arrival
        self.dropped = False  # nobody will ask for it: let it go on arrival

    def done(self, view: memoryview | None, release: Callable[[], None]) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            waiter(view)
            release()
        elif self.dropped or view is None:
            self.failed = view is None
            release()
        else:
            self.view, self.release = view, release
            self.arrived = time.monotonic()

    def drop(self) -> None:
        """Not to be served to anyone who has not asked yet."""
        self.dropped = True
        if self.view is not None:
            self.view = None
            self.release()
            self.release = _nothing


class Readahead:
    """The reads of one LUN file: plain reads, and one read ahead of a sequential reader."""

    def __init__(self, dev: BlockDevice) -> None:
        self.dev = dev
        self._end = -1  # where the last read ended
        self._ahead: _Ahead | None = None

    def start_read(self, offset: int, length: int, done: ReadDone) -> Started | None:
        """As ``BlockDevice.start_read``; ``done`` may be called before this returns."""
        ahead = self._ahead
        sequential = offset == self._end
        self._end = offset + length
        if ahead is not None and ahead.offset == offset and ahead.length == length \
                and not ahead.failed and not (ahead.arrived and self._stale(ahead)):
            self._ahead = None
            if ahead.view is not None:  # here already
                view, release = ahead.view, ahead.release
                ahead.view, ahead.release = None, _nothing
                self._read_ahead(offset + length, length)
                done(view)
                release()
                return _nothing
            ahead.waiter = done  # on its way
            self._read_ahead(offset + length, length)

            def abandon() -> None:
                ahead.waiter = None
                ahead.dropped = True

            return abandon
        self.drop()
        started = self.dev.start_read(offset, length, done)
        if started is not None and sequential and length >= MIN_READ:
            self._read_ahead(offset + length, length)
        return started

    def _stale(self, ahead: _Ahead) -> bool:
        return time.monotonic() - ahead.arrived > KEEP

    def _read_ahead(self, offset: int, length: int) -> None:
        length = min(length, self.dev.size - offset)
        if length <= 0:
            return
        ahead = _Ahead(offset, length)
        if self.dev.start_read_held(offset, length, ahead.done) is not None:
            self._ahead = ahead

    def drop(self) -> None:
        """Forget what was read ahead and not asked for (a write, a discard, a resize,
        or a read elsewhere)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.drop()
