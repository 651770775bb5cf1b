"""Which writes to a logical unit may run at the same time.

COMPARE AND WRITE and ORWRITE read blocks and then write them; SBC-3 makes each of them
one indivisible operation.  Between their read and their write no other command may
change the medium, or its data would be lost (a plain WRITE that lands in between is
overwritten by data computed from what it replaced).  Plain writes, on the other hand,
run side by side: the initiator orders overlapping ones itself.

So plain writes hold the gate *shared* and those two commands hold it *exclusive*.  An
exclusive holder waits for the writes in progress to finish; while it waits or holds the
gate no new write starts, so a steady stream of writes cannot starve it.  ``open`` tells
the reader loop whether a write may run at once, without waiting (else it takes the task
path, which waits here).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


class WriteGate:
    def __init__(self) -> None:
        self._shared = 0
        self._exclusive = False
        self._waiting = 0  # exclusive holders waiting for their turn
        self._changed = trio.Event()

    @property
    def open(self) -> bool:
        """Whether a plain write may start now."""
        return not self._exclusive and not self._waiting

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        while not self.open:
            await self._changed.wait()
        self._shared += 1
        try:
            yield
        finally:
            self._shared -= 1
            if not self._shared:
                self._notify()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        self._waiting += 1
        try:
            while self._exclusive or self._shared:
                await self._changed.wait()
        finally:
            self._waiting -= 1
            if not self._waiting:
                self._notify()  # writes held back for us may start again if we gave up
        self._exclusive = True
        try:
            yield
        finally:
            self._exclusive = False
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
