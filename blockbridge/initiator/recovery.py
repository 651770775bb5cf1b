"""Session recovery: reconnect after a lost connection and retry what was not acknowledged.

Like open-iscsi's replacement_timeout: while the target is away, commands wait; the
session logs in again with the same ISID (session reinstatement) and every command that
had no status is sent again.  Only after ``replacement_timeout`` seconds do waiting and
new commands fail.  Re-sending is safe because a command without status has no visible
effect the initiator relied on (writes are idempotent at the same LBA with the same data).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import trio

from blockbridge.iscsi.errors import ISCSIError
from blockbridge.iscsi.initiator_connection import Response
from blockbridge.iscsi.params import SessionParams
from blockbridge.iscsi.pdu import Buffer

from .errors import ConnectionLost, InitiatorError
from .session import Session

log = logging.getLogger(__name__)

DEFAULT_REPLACEMENT_TIMEOUT = 120.0


class RecoveringSession:
    def __init__(self, connect: Callable[[], Awaitable[Session]], nursery: trio.Nursery, *,
                 replacement_timeout: float = DEFAULT_REPLACEMENT_TIMEOUT,
                 nop_interval: float = 5.0, nop_timeout: float = 5.0) -> None:
        self._connect = connect
        self._nursery = nursery
        self.replacement_timeout = replacement_timeout
        self.nop_interval, self.nop_timeout = nop_interval, nop_timeout
        self._session: Session | None = None
        self._generation = 0
        self._lock = trio.Lock()
        self.state = "connecting"
        self.since = time.time()
        self.reconnects = 0
        self._closing = False
        self._why = ""  # why the latest reconnection attempt failed
        # called after each reconnection: the new session has no unit attentions for
        # what changed on the target while it was away
        self.on_reconnect: Callable[[], None] | None = None

    async def start(self) -> None:
        self._attach(await self._connect())

    def _attach(self, session: Session) -> None:
        self._session = session
        self._why = ""
        self._generation += 1
        self.state, self.since = "connected", time.time()
        self._nursery.start_soon(session.run)
        self._nursery.start_soon(session.keepalive, self.nop_interval, self.nop_timeout)

    @property
    def session(self) -> Session:
        assert self._session is not None
        return self._session

    @property
    def params(self) -> SessionParams:
        return self.session.params

    @property
    def target_name(self) -> str | None:
        return self.session.target_name

    @property
    def closed(self) -> str | None:
        return None if self.state == "connected" else self.state

    def submit(self, lun: int, cdb: bytes,
              done: Callable[[Response | None, str | None], None], *,
              data_out: Buffer | None = None, read_length: int = 0,
              read_into: bytearray | None = None) -> Callable[[], None] | None:
        """``Session.submit`` while connected; None otherwise (use ``command``, which
        waits for the reconnection)."""
        session = self._session
        if self.state != "connected" or session is None or session.closed is not None:
            return None
        return session.submit(lun, cdb, done, data_out=data_out, read_length=read_length,
                             read_into=read_into)

    def push(self) -> None:
        if self._session is not None:
            self._session.push()

    async def command(self, lun: int, cdb: bytes, *, data_out: Buffer | None = None,
                      read_length: int = 0, read_into: bytearray | None = None) -> Response:
        deadline: float | None = None
        while True:
            session, generation = self.session, self._generation
            try:
                return await session.command(lun, cdb, data_out=data_out,
                                             read_length=read_length, read_into=read_into)
            except ConnectionLost as exc:
                if self._closing:
                    raise
                if deadline is None:
                    deadline = trio.current_time() + (
                        0.0 if self.state == "failed" else self.replacement_timeout)
                await self._recover(generation, deadline, str(exc))

    async def _recover(self, generation: int, deadline: float, reason: str) -> None:
        async with self._lock:
            if self._generation != generation and self.state == "connected":
                return  # another task already reconnected
            if self.state == "connected":
                log.warning("%s: %s; reconnecting (I/O waits up to %.0f s)",
                            self.session.portal, reason, self.replacement_timeout)
                self.state, self.since = "reconnecting", time.time()
            delay = 0.25
            while True:
                try:
                    with trio.fail_after(max(deadline - trio.current_time(), 0.01) + 0.5):
                        session = await self._connect()
                except (InitiatorError, ISCSIError, OSError, trio.TooSlowError) as exc:
                    if isinstance(exc, trio.TooSlowError):
                        # cut short by the deadline (a target may hold a refused login)
                        why = self._why or "the target did not answer in time"
                    else:
                        why = str(exc) or type(exc).__name__
                    if why != self._why:  # once per reason, not once per attempt
                        log.warning("%s: reconnecting failed: %s", self.session.portal, why)
                        self._why = why
                    if trio.current_time() >= deadline:
                        if self.state != "failed":
                            log.error("%s: target unreachable for %.0f s; failing I/O (%s)",
                                      self.session.portal, self.replacement_timeout, why)
                            self.state, self.since = "failed", time.time()
                        raise ConnectionLost(f"target unreachable: {why}") from None
                    await trio.sleep(min(delay, max(deadline - trio.current_time(), 0)))
                    delay = min(delay * 2, 5.0)
                    continue
                self.reconnects += 1
                log.warning("%s: reconnected; resending unacknowledged commands",
                            session.portal)
                self._attach(session)
                if self.on_reconnect is not None:
                    self.on_reconnect()
                return

    async def logout(self) -> None:
        self._closing = True
        if self._session is not None:
            await self._session.logout()
