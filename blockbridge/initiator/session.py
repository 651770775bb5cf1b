"""A trio iSCSI session (one connection, ERL 0): login, then many commands in flight.

``Session.connect()`` logs in; then the session drives an ``InitiatorConnection`` (the
sans-IO machine that holds every protocol rule): ``run()`` is the reader task, started
in the caller's nursery (while a ``Poller`` runs, the poller receives for it);
``submit()`` sends a command and calls back when it completes (no task per command),
``command()`` is the same for a caller that waits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import trio

from blockbridge.iscsi import chap
from blockbridge.iscsi import pdu as P
from blockbridge.iscsi.constants import AsyncEvent, LogoutReason, name_of
from blockbridge.iscsi.errors import ISCSIError
from blockbridge.iscsi.initiator_connection import (
    AsyncEventReceived,
    Closed,
    CommandDone,
    ConnectionError_,
    Event,
    InitiatorConnection,
    PeerSilent,
    Rejected,
    RequestDone,
    Response,
    TextDone,
)
from blockbridge.iscsi.initiator_login import InitiatorLogin
from blockbridge.iscsi.login import ChapCredentials
from blockbridge.iscsi.params import SessionParams
from blockbridge.iscsi.pdu import Buffer
from blockbridge.poller import Lease, Poller
from blockbridge.tls import ClientTLS
from blockbridge.transport import FAIR_SHARE, ConnectionClosed, PDUStream

from .errors import ConnectionLost
from .login_phase import log_in

log = logging.getLogger(__name__)


class Session:
    def __init__(self, stream: PDUStream, login: InitiatorLogin, portal: str) -> None:
        self.stream = stream
        self.params: SessionParams = login.params
        self.portal = portal
        self.target_name = login.target_name
        self.tsih = login.tsih
        self.isid = login.isid
        self.conn = InitiatorConnection(
            login.params, cmdsn=login.cmdsn, expcmdsn=login.expcmdsn,
            maxcmdsn=login.maxcmdsn, statsn=login.statsn, now=trio.current_time())
        stream.placement = self.conn.placement
        self._waiting: dict[int, Callable[[Event | None, str | None], None]] = {}
        self._closed: str | None = None
        self._flush_wanted = trio.Event()  # PDUs are queued that a write must take
        self._timer_moved = trio.Event()  # the machine's timer may be earlier now
        self._lease: Lease | None = None  # while a Poller receives for us
        self.stats = {"commands": 0, "bytes_in": 0, "bytes_out": 0}

    @property
    def cmdsn(self) -> int:
        return self.conn.cmdsn

    @property
    def expstatsn(self) -> int:
        return self.conn.expstatsn

    # ---------------------------------------------------------------- login

    @classmethod
    async def connect(
        cls, host: str, port: int, *, initiator_name: str, target_name: str | None,
        credentials: ChapCredentials | None = None,
        target_credentials: ChapCredentials | None = None,
        proposals: Mapping[str, str] | None = None, isid: bytes | None = None,
        chap_algorithms: tuple[int, ...] = chap.DEFAULT_PREFERENCE,
        tls: ClientTLS | None = None,
    ) -> Session:
        """Connect and log in (:func:`.login_phase.log_in`)."""
        stream, login, portal = await log_in(
            host, port, initiator_name=initiator_name, target_name=target_name,
            credentials=credentials, target_credentials=target_credentials,
            proposals=proposals, isid=isid, chap_algorithms=chap_algorithms, tls=tls)
        return cls(stream, login, portal)

    # ---------------------------------------------------------------- the driver

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Receive PDUs until the connection ends, and write what the machine asks for;
        fails every pending command then."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._flusher)
            task_status.started()
            try:
                await self._reader()
            finally:
                nursery.cancel_scope.cancel()

    async def _reader(self) -> None:
        receive, handle = self.stream.receive_pdu, self._handle
        current = Poller.current.get
        try:
            while True:
                poller = current()
                if poller is not None and poller.running and self._closed is None \
                        and self.stream.pollable is not None:
                    await self._polled(poller)  # until the poller stops or we leave it
                handle(await receive())
        except ConnectionClosed as exc:
            self._fail_all(f"connection to {self.portal} lost: {exc}")
        except (ConnectionError_, ISCSIError) as exc:
            self._fail_all(f"protocol error from {self.portal}: {exc}")
            await self.stream.aclose()
        except Closed:  # failed already (a send that found the connection gone)
            await self.stream.aclose()

    def _handle(self, pdu: P.PDU) -> None:
        conn = self.conn
        event = conn.receive(pdu, trio.current_time())
        if event is not None:
            self._deliver(event)
        if conn.has_output:
            self._post(conn.data_to_send())
            self.push()

    async def _polled(self, poller: Poller) -> None:
        """Leave receiving to ``poller`` until it stops or the connection ends: each PDU
        is handled where it is received, outside any task; raises what ended it."""
        stream, handle = self.stream, self._handle
        fd = stream.pollable
        assert fd is not None
        self._lease = lease = Lease(poller, fd)  # taken back before the socket closes
        failure: list[Exception] = []

        def readable() -> None:
            try:
                for _ in range(FAIR_SHARE):  # while receives fill their room (large data)
                    more = stream.receive_now()
                    while self._closed is None and (pdu := stream.buffered_pdu()) is not None:
                        handle(pdu)
                    if not more or self._closed is not None:
                        break
            except (ConnectionClosed, ConnectionError_, ISCSIError, Closed) as exc:
                failure.append(exc)
                lease.leave()

        while (pdu := stream.buffered_pdu()) is not None:  # what came with the last receive
            handle(pdu)
        await lease.run(readable)
        if failure:
            raise failure[0]

    def _deliver(self, event: Event) -> None:
        if isinstance(event, AsyncEventReceived):
            log.info("%s: asynchronous event %s from the target", self.portal,
                     name_of(AsyncEvent, event.pdu.event))
            return
        if isinstance(event, PeerSilent):
            return
        done = self._waiting.pop(event.itt, None)
        if done is not None:
            done(event, None)

    async def _flusher(self) -> None:
        """Writes what could not go out at once (a full socket, a large Data-Out)."""
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted = trio.Event()
            try:
                await self.stream.flush(gather=False)
            except ConnectionClosed as exc:
                self._fail_all(f"connection to {self.portal} lost: {exc}")
                return

    def _post(self, pdus: list[P.PDU]) -> None:
        try:
            self.stream.post(pdus)
        except ConnectionClosed as exc:
            self._fail_all(f"connection to {self.portal} lost: {exc}")

    def push(self) -> None:
        """Write the PDUs posted so far, without waiting: what the socket does not take
        at once is left to the flusher task."""
        try:
            if not self.stream.write_now():
                self._flush_wanted.set()
        except ConnectionClosed as exc:
            self._fail_all(f"connection to {self.portal} lost: {exc}")

    def _leave_poller(self) -> None:
        if self._lease is not None:
            self._lease.leave()

    def _fail_all(self, reason: str) -> None:
        self._leave_poller()  # the socket is about to close: its number may be reused
        if self._closed is None:
            self._closed = reason
        self.conn.close(reason)
        waiting, self._waiting = self._waiting, {}
        for done in waiting.values():
            done(None, reason)
        self._timer_moved.set()

    # ---------------------------------------------------------------- commands

    def submit(self, lun: int, cdb: bytes, done: Callable[[Response | None, str | None], None],
              *, data_out: Buffer | None = None, read_length: int = 0,
              read_into: bytearray | None = None) -> Callable[[], None]:
        """Start a SCSI command without waiting: ``done(response, None)`` is called from
        the reader task when it completes, ``done(None, reason)`` if it cannot.  The PDUs
        are posted; they go out with the next ``push()`` (the caller's, at the end of a
        batch) or the command's own.  Returns how to abandon the command (see ``abandon``).
        Raises ConnectionLost if the session is closed."""
        if self._closed is not None:
            raise ConnectionLost(self._closed)
        itt, pdus = self.conn.submit(lun, cdb, data_out=data_out, read_length=read_length,
                                     read_into=read_into)
        stats = self.stats

        def completed(event: Event | None, error: str | None) -> None:
            if isinstance(event, CommandDone):
                stats["commands"] += 1
                stats["bytes_in"] += event.response.received
                done(event.response, None)
            elif isinstance(event, Rejected):
                done(None, f"the target rejected the request (reason 0x{event.reason:02x})")
            else:
                done(None, error or "no answer")

        self._waiting[itt] = completed
        if data_out is not None:
            stats["bytes_out"] += memoryview(data_out).nbytes
        if pdus:
            self._post(pdus)
        return lambda: self.abandon(itt)

    def abandon(self, itt: int) -> None:
        """Nobody waits for command ``itt`` any more: its answer is dropped, and its
        buffers are never written again."""
        self._waiting.pop(itt, None)
        self.conn.abandon(itt)

    async def command(self, lun: int, cdb: bytes, *, data_out: Buffer | None = None,
                      read_length: int = 0, read_into: bytearray | None = None) -> Response:
        """Run one SCSI command; raises ConnectionLost if the session dies first.

        Read data lands in ``read_into`` when it is exactly ``read_length`` bytes (only
        the first ``Response.received`` bytes are written), else in a new buffer."""
        finished = trio.Event()
        outcome: list[Response | str] = []

        def done(response: Response | None, error: str | None) -> None:
            outcome.append(response if response is not None else error or "no answer")
            finished.set()

        abandon = self.submit(lun, cdb, done, data_out=data_out, read_length=read_length,
                             read_into=read_into)
        self.push()
        try:
            await finished.wait()
        except BaseException:
            abandon()
            raise
        result = outcome[0]
        if isinstance(result, str):
            raise ConnectionLost(result)
        return result

    async def _request(self, itt: int, pdus: list[P.PDU]) -> Event:
        finished = trio.Event()
        outcome: list[Event | str] = []

        def done(event: Event | None, error: str | None) -> None:
            outcome.append(event if event is not None else error or "no answer")
            finished.set()

        self._waiting[itt] = done
        self._post(pdus)
        self.push()
        try:
            await finished.wait()
        except BaseException:
            self.abandon(itt)
            raise
        result = outcome[0]
        if isinstance(result, str):
            raise ConnectionLost(result)
        if isinstance(result, Rejected):
            raise ConnectionLost(f"the target rejected the request (reason 0x{result.reason:02x})")
        return result

    def _machine(self) -> InitiatorConnection:
        if self._closed is not None:
            raise ConnectionLost(self._closed)
        return self.conn

    async def text(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        event = await self._request(*self._machine().text(pairs))
        assert isinstance(event, TextDone)
        return event.pairs

    async def nop(self, data: bytes = b"") -> bytes:
        event = await self._request(*self._machine().nop(data))
        assert isinstance(event, RequestDone)
        return bytes(event.pdu.data)

    async def keepalive(self, interval: float = 5.0, timeout: float = 5.0) -> None:
        """NOP-Out pings after ``interval`` seconds of silence; a target silent for
        ``timeout`` more seconds is treated as gone."""
        conn = self.conn
        conn.nop_interval, conn.nop_timeout = interval, timeout
        while self._closed is None:
            timer = conn.get_timer()
            if timer is None:
                return
            with trio.move_on_at(timer):
                await self._timer_moved.wait()
                self._timer_moved = trio.Event()
                continue
            if self._closed is not None:
                return
            event = conn.handle_timer(trio.current_time())
            if isinstance(event, PeerSilent):
                log.warning("%s: no answer to NOP-Out within %ss; closing the session",
                            self.portal, timeout)
                self._fail_all(f"{self.portal} stopped answering (NOP-Out timeout)")
                await self.stream.aclose()
                return
            if conn.has_output:
                self._post(conn.data_to_send())
                self.push()

    async def logout(self) -> None:
        if self._closed is not None:
            return
        try:
            with trio.move_on_after(5):
                await self._request(*self.conn.logout(LogoutReason.CLOSE_SESSION))
        except ConnectionLost:
            pass
        self._closed = self._closed or "logged out"
        self._leave_poller()
        await self.stream.aclose()

    @property
    def closed(self) -> str | None:
        return self._closed
