"""One iSCSI connection on the target: the trio driver of its protocol machines.

After the login (``login_phase``) the full-feature phase is a
:class:`~blockbridge.iscsi.target_connection.TargetConnection`: the reader loop feeds it
every PDU (its ``place`` decides where large data segments are received) and does what
its events ask.  Reads served from the page cache and write-back writes whose data came
with the command are answered right there in the reader loop, which writes its answers,
many per system call, before it receives again; a small read that misses
is answered from its io_uring completion.  Every other SCSI command runs as its own task
in the connection's nursery: it reserves its buffer budget, asks the machine for its
data (R2Ts), runs on the logical unit and sends the machine's numbered answer.  Answers
given outside the reader loop are posted to the PDU stream and written, many per system
call, by one flusher task; one timer task sleeps until the machine's next deadline
(NOP-In pings, Data-Out timeouts).

Memory stays bounded whatever the initiator does: every buffer a command holds while it
waits for its peer is reserved first in the session's budget and the server's
(``budget``), write buffers are taken when the first byte of data arrives, and a write's
data is reserved before its R2T.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import trio

from blockbridge.buffers import MAX_POOLED, BufferPool
from blockbridge.iscsi import target_events as E
from blockbridge.iscsi.errors import MachineStopped, NegotiationError, PDUFormatError, ProtocolError
from blockbridge.iscsi.names import printable
from blockbridge.iscsi.pdu import PDU
from blockbridge.iscsi.target_connection import TargetConnection
from blockbridge.poller import Lease, Poller
from blockbridge.scsi.constants import Status
from blockbridge.transport import FAIR_SHARE, LOGIN_RECEIVE_CHUNK, ConnectionClosed, PDUStream

from .budget import SessionBudget
from .commands import target_result
from .io import BUFFERS
from .login_phase import Drop, log_in
from .lun import IN_FLIGHT, SCSIResult
from .session import Session
from .tasks import Job, run_job, task_management, text_answers

if TYPE_CHECKING:
    from .server import TargetServer

log = logging.getLogger(__name__)

MAX_POSTED_BYTES = 8 << 20  # answered but unsent read data before the reader waits
LOGOUT_GRACE = 10.0  # how long a logout waits for running commands

__all__ = ["Connection", "Drop"]


class Connection:
    def __init__(self, server: TargetServer, stream: trio.abc.Stream, peer: str, local: str,
                 *, address_key: str = ""):
        self.server = server
        # small reads until the login is done: an idle connection holds a few KiB
        self.pdus = PDUStream(stream, max_data_segment_length=65536,
                              receive_chunk=LOGIN_RECEIVE_CHUNK)
        self.peer = peer
        self.tls = isinstance(stream, trio.SSLStream)  # came in through a TLS portal
        self.address_key = address_key or peer.rsplit(":", 1)[0].strip("[]")
        # holds one of the server's places for connections that proved nothing yet (in
        # login or in a discovery session); given back when a normal session starts
        self.unproven = True
        self._idle: trio.CancelScope | None = None  # a discovery session's idle limit
        self._dropped = 0  # commands dropped for a CmdSN outside the window
        self._timeouts = 0  # commands ended for want of Data-Out or of buffer budget
        self._buffers: BufferPool = BUFFERS  # recycled after each command
        self.budget: SessionBudget = server.budget.session(server.buffer_limits.session_budget)
        self.data_out_timeout = server.buffer_limits.data_out_timeout
        self.local = local
        self.session: Session | None = None
        self.statsn = 0x1000
        self.machine: TargetConnection | None = None
        self.jobs: dict[int, Job] = {}
        self._nursery: trio.Nursery | None = None
        self._flush_wanted = trio.Event()  # responses were posted for the flusher to send
        # The reader loop is answering a command in place: what it posts is written
        # before it receives again (``_write_posted``), without waking the flusher.
        self._in_reader = False
        self._timer = trio.CancelScope()  # the timer task's sleep, until the next deadline
        self._quiet: trio.Event | None = None  # set when the last command ends
        self._lease: Lease | None = None  # while a Poller receives for us
        self.scope = trio.CancelScope()

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        with self.scope:
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    try:
                        if await log_in(self):
                            await self._full_feature()
                    except ConnectionClosed as exc:
                        log.debug("%s: %s", self.peer, printable(exc))
                    except PDUFormatError as exc:
                        log.warning("%s: dropping connection: malformed PDU: %s", self.peer,
                                    printable(exc))
                    except (Drop, NegotiationError, ProtocolError) as exc:
                        log.warning("%s: dropping connection: %s", self.peer, printable(exc))
                    finally:
                        nursery.cancel_scope.cancel()
            finally:
                self._leave_poller()  # before the socket closes: its number is reused
                self._cleanup()
                self.budget.close()  # answers queued but unsent are dropped with the stream
                await self.pdus.aclose()
                self.server.connection_quiet()

    def _leave_poller(self) -> None:
        if self._lease is not None:
            self._lease.leave()

    def _cleanup(self) -> None:
        s = self.session
        if s is None:
            return
        s.connections.discard(self)
        if not s.connections:
            self.server.sessions.remove(s)
            if s.nexus is not None:
                for lu in s.luns.values():
                    lu.nexus_lost(s.nexus)
            log.info("%s: session %s closed (target %s)", self.peer, s.tsih,
                     s.target_name or "discovery")

    def close(self) -> None:
        self.scope.cancel()

    @property
    def busy(self) -> bool:
        return self.machine is not None and self.machine.busy

    def command_ended(self) -> None:
        if self.busy:
            return
        if self._quiet is not None:
            self._quiet.set()
        self.server.connection_quiet()

    # ---------------------------------------------------------------- full feature phase

    async def _full_feature(self) -> None:
        s, nursery = self.session, self._nursery
        assert s is not None and nursery is not None
        limits = self.server.limits
        target = self.server.targets.get(s.target_name)
        interval = target.nop_interval if target is not None else 0
        m = self.machine = TargetConnection(
            s.params, expcmdsn=s.expcmdsn, depth=s.depth, statsn=self.statsn,
            now=trio.current_time(), discovery=s.discovery,
            data_out_timeout=self.data_out_timeout, nop_interval=interval or 0.0,
            nop_timeout=(target.nop_timeout if target is not None else 0) or 0.0,
            take_buffer=self._buffers.take, give_buffer=self._buffers.give,
            max_placed=MAX_POOLED)
        nursery.start_soon(self._flusher)
        nursery.start_soon(self._timers)
        self.pdus.placement = m.place
        self.pdus.before_receive = self._write_posted
        if s.discovery:  # it may answer SendTargets for a while, not hold a place for ever
            self._idle = trio.CancelScope(deadline=trio.current_time() + limits.discovery_idle)
            with trio.move_on_after(limits.discovery_lifetime) as lifetime, self._idle:
                await self._reader(m)
            if self._idle.cancelled_caught:
                log.info("%s: discovery session %d closed: idle for %gs", self.peer, s.tsih,
                         limits.discovery_idle)
            elif lifetime.cancelled_caught:
                log.info("%s: discovery session %d closed: open for %gs, the longest "
                         "allowed", self.peer, s.tsih, limits.discovery_lifetime)
        else:
            await self._reader(m)

    async def _reader(self, m: TargetConnection) -> None:
        pdus, current = self.pdus, Poller.current.get
        while True:
            pdu = pdus.buffered_pdu()
            poller = current() if pdu is None else None
            if poller is not None and poller.running and pdus.pollable is not None:
                rest = await self._polled(poller, m)  # what needs this task
            else:
                if pdu is None:
                    pdu = await pdus.receive_pdu()
                try:
                    rest = self._process(m, pdu)
                except ProtocolError as exc:
                    await self._refuse(m, pdu, exc)
                    raise
            for ev in rest:
                await self.handle(m, ev)
            if m.state is E.State.LOGGED_OUT:
                return
            if pdus.backlog > MAX_POSTED_BYTES:
                # Answers to reads piling up unsent: the initiator is not reading.  Stop
                # reading its commands until they are written (TCP back-pressure).
                await pdus.flush()

    async def _refuse(self, m: TargetConnection, pdu: PDU, exc: ProtocolError) -> None:
        if exc.reject:
            await self.pdus.send_pdu(m.error_reject(pdu, exc))

    def _process(self, m: TargetConnection, pdu: PDU) -> list[E.Event]:
        """Feed one PDU to the machine and do what its events ask that needs no waiting;
        returns the events that do (from the first of them on, in order)."""
        if self._idle is not None:
            self._idle.deadline = trio.current_time() + self.server.limits.discovery_idle
        events = m.receive(pdu, trio.current_time())
        for i, ev in enumerate(events):
            if type(ev) is E.CommandReceived:  # most of them: no coroutine for it
                self._in_reader = True
                try:
                    self._command(m, ev)
                finally:
                    self._in_reader = False
            elif not self.handle_now(m, ev):
                return events[i:]
        return []

    async def _polled(self, poller: Poller, m: TargetConnection) -> list[E.Event]:
        """Leave receiving to ``poller``: each PDU is handled where it is received,
        outside any task, until one brings an event that needs this task (returned), the
        answers pile up, the session logs out or the poller stops; raises what ended
        the connection (after sending the Reject a protocol error asks for)."""
        pdus = self.pdus
        fd = pdus.pollable
        assert fd is not None
        self._lease = lease = Lease(poller, fd)  # taken back before the socket closes
        rest: list[E.Event] = []
        failure: list[Exception] = []
        rejected: list[PDU] = []

        def readable() -> None:
            try:
                for _ in range(FAIR_SHARE):  # while receives fill their room (large data)
                    more = pdus.receive_now()
                    while (pdu := pdus.buffered_pdu()) is not None:
                        try:
                            rest.extend(self._process(m, pdu))
                        except ProtocolError:
                            rejected.append(pdu)
                            raise
                        if rest or m.state is E.State.LOGGED_OUT \
                                or pdus.backlog > MAX_POSTED_BYTES:
                            lease.leave()  # this task must act
                            more = False
                            break
                    if not more:
                        break
                self._write_posted()
            except (ConnectionClosed, PDUFormatError, ProtocolError) as exc:
                failure.append(exc)
                lease.leave()

        self._write_posted()  # what the task answered in place goes out first
        await lease.run(readable)
        if failure:
            exc = failure[0]
            if isinstance(exc, ProtocolError) and rejected:
                await self._refuse(m, rejected[0], exc)
            raise exc
        return rest

    async def handle(self, m: TargetConnection, ev: E.Event) -> None:
        if self.handle_now(m, ev):
            return
        if isinstance(ev, E.TaskManagement):
            await task_management(self, m, ev)
        elif isinstance(ev, E.LogoutRequested):
            with trio.move_on_after(LOGOUT_GRACE):
                while m.busy:
                    self._quiet = trio.Event()
                    await self._quiet.wait()
            await self.pdus.send_pdus([m.logout_response(ev.itt, ev.reason)])

    def handle_now(self, m: TargetConnection, ev: E.Event) -> bool:
        """Do what ``ev`` asks if that needs no waiting; False if it does."""
        if isinstance(ev, E.CommandReceived):
            self._command(m, ev)
        elif isinstance(ev, E.Send):
            self._post(list(ev.pdus))
        elif isinstance(ev, E.DataReceived | E.DataTimedOut):
            job = self.jobs.get(ev.itt)
            if job is not None:
                if isinstance(ev, E.DataReceived):
                    job.data = ev.data
                else:
                    job.data, job.timed_out = None, (ev.received, ev.expected)
                job.ready.set()
        elif isinstance(ev, E.CommandDropped):
            self._dropped += 1
            log.log(logging.INFO if self._dropped == 1 else logging.DEBUG,
                    "%s: dropping command with CmdSN %d outside the window %d..%d%s",
                    self.peer, ev.cmdsn, ev.expcmdsn, ev.maxcmdsn,
                    " (more on this connection are logged at debug level)"
                    if self._dropped == 1 else "")
        elif isinstance(ev, E.TextRequested):
            self._post(m.text_answer(ev.itt, text_answers(self, ev.pairs)))
        elif isinstance(ev, E.PeerSilent):
            log.warning("%s: no answer to NOP-In within %ss, closing", self.peer, ev.timeout)
            self.close()
        else:
            return False
        return True

    def _post(self, pdus: Sequence[E.Outgoing], after: Callable[[], None] | None = None,
              *, written_later: bool = False) -> None:
        """Queue PDUs to send; the flusher task writes them unless the caller will
        (``written_later``, or the reader loop answering in place)."""
        self.pdus.post(pdus, after=after)
        if not (written_later or self._in_reader):
            self._flush_wanted.set()

    def _write_posted(self) -> None:
        """Before the reader receives more: write the answers it posted, in one system
        call without a task switch; what the socket does not take goes to the flusher."""
        if self.pdus.backlog and not self.pdus.write_now():
            self._flush_wanted.set()

    async def _flusher(self) -> None:
        """Write what was posted, many PDUs per system call."""
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted = trio.Event()
            try:
                await self.pdus.flush(gather=False)
            except ConnectionClosed:
                self.close()
                return

    async def _timers(self) -> None:
        """Sleep until the machine's next deadline, then let it act."""
        m = self.machine
        assert m is not None
        while m.state is E.State.FULL_FEATURE:
            when = m.get_timer()
            with trio.CancelScope(deadline=math.inf if when is None else when) as self._timer:
                await trio.sleep_forever()
            if m.state is not E.State.FULL_FEATURE:
                return
            for ev in m.handle_timer(trio.current_time()):
                await self.handle(m, ev)

    def rearm(self, m: TargetConnection) -> None:
        """Wake the timer task sooner if the machine's next deadline came nearer."""
        when = m.get_timer()
        if when is not None and when < self._timer.deadline:
            self._timer.deadline = when

    # ---------------------------------------------------------------- commands

    def _command(self, m: TargetConnection, ev: E.CommandReceived) -> None:
        """Start a command the machine admitted: at once if the unit finishes it at once
        (page-cache read, write-back write with all its data), else as a task."""
        s = self.session
        assert s is not None and s.nexus is not None and self._nursery is not None
        cmd = ev.cmd
        lu = s.luns.get(ev.lun)
        if lu is not None and cmd.read != cmd.write and ev.complete:
            outcome = lu.submit(
                cmd.cdb, s.nexus, ev.data, files=cmd.read and self.pdus.sends_files,
                budget=self.budget,
                done=partial(self._read_completed, m, ev) if cmd.read else None)
            if isinstance(outcome, SCSIResult):
                self._answer(m, ev, outcome)
                return
            if outcome is IN_FLIGHT:
                return  # a cache miss on io_uring: answered from its completion
        job = Job(ev)
        early: SCSIResult | None = None
        if lu is None:
            if cmd.write and cmd.expected_length:
                early = target_result(cmd, s.luns, ev.lun)
        else:
            early = lu.refuse_early(cmd.cdb, s.nexus, cmd.expected_length, cmd.write)
        if early is None and ev.unasked:
            size = cmd.expected_length + (lu.buffer_length(cmd.cdb) if lu else 0)
            if self.budget.try_take(size):
                job.reserved = size
            else:  # its data comes unasked and has nowhere to go: retried later
                self.note_timeout("no buffer budget for the unsolicited data of task "
                                   f"0x{cmd.itt:08x}: answered BUSY")
                early = SCSIResult(Status.BUSY)
        if early is not None:
            self._answer(m, ev, early)  # any Data-Out that follows is ignored
            return
        self.jobs[cmd.itt] = job
        self._nursery.start_soon(run_job, self, m, job)

    def _answer(self, m: TargetConnection, ev: E.CommandReceived, result: SCSIResult,
                *, written_later: bool = False) -> None:
        self._post(self.response(m, ev, result), after=result.release,
                   written_later=written_later)

    def response(self, m: TargetConnection, ev: E.CommandReceived,
                  result: SCSIResult) -> list[E.Outgoing]:
        assert self.session is not None
        written = None
        if ev.cmd.write and not ev.cmd.read:
            lu = self.session.luns.get(ev.lun)
            written = lu.data_out_length(ev.cmd.cdb) if lu is not None else None
        return m.respond(ev.itt, result.status, result.data, result.sense, written=written)

    def _read_completed(self, m: TargetConnection, ev: E.CommandReceived,
                        result: SCSIResult) -> Callable[[], None] | None:
        """A read started without a task (on io_uring) completed: answer it, unless the
        connection is gone meanwhile (then only its buffer goes back).  The answers of
        one batch of completions are written together, after the batch."""
        follow_up: Callable[[], None] | None = self._write_completed
        try:
            self._answer(m, ev, result, written_later=True)
        except (ConnectionClosed, MachineStopped):  # the connection is gone
            if result.release is not None:
                result.release()
            follow_up = None
        self.command_ended()
        return follow_up

    def _write_completed(self) -> None:
        try:
            self._write_posted()
        except ConnectionClosed:
            self.close()

    def note_timeout(self, what: str) -> None:
        """Log a command ended for want of data or budget: the first of a connection as a
        warning, the others at debug level (a hostile peer could fill the log)."""
        self._timeouts += 1
        log.log(logging.WARNING if self._timeouts == 1 else logging.DEBUG, "%s: %s%s",
                self.peer, what, " (more on this connection are logged at debug level)"
                if self._timeouts == 1 else "")

