"""One iSCSI connection on the target: login, then full-feature phase.

The reader loop receives PDUs and dispatches them.  Reads served from the page cache and
write-back writes whose data came with the command are answered right there; a small
read that misses is answered from its io_uring completion.  Every other SCSI command runs
as its own task in the connection's nursery (so commands proceed concurrently),
collecting Data-Out through R2Ts, running on the logical unit, and answering with Data-In
and a response.  Answers given outside a task are posted to the PDU stream and written,
many per system call, by one flusher task.

Memory stays bounded whatever the initiator does: every buffer a command holds while it
waits for its peer is reserved first in the session's budget and the server's
(``budget``), write buffers are taken when the first byte of data arrives, a write's data
is reserved before its R2T, and Data-Out that does not come within the Data-Out timeout
ends the command.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING

import trio

from blockbridge.buffers import MAX_POOLED, BufferPool
from blockbridge.iscsi import pdu as P
from blockbridge.iscsi.constants import (
    RESERVED_TAG,
    LoginStatus,
    LogoutReason,
    LogoutResponseCode,
    Opcode,
    RejectReason,
    TaskFunction,
    TaskResponse,
    name_of,
)
from blockbridge.iscsi.errors import NegotiationError, PDUFormatError
from blockbridge.iscsi.framing import FileRange, WithFileData, segment_length
from blockbridge.iscsi.login import TargetLogin
from blockbridge.iscsi.names import printable
from blockbridge.iscsi.serial import sn_add
from blockbridge.iscsi.text import TextAssembler, decode_text, encode_text
from blockbridge.iscsi.window import Admission, CommandWindow
from blockbridge.scsi.constants import INITIATOR_RESPONSE_TIMEOUT, Op, SenseKey, Status
from blockbridge.scsi.sense import build_sense
from blockbridge.transport import LOGIN_RECEIVE_CHUNK, RECEIVE_CHUNK, ConnectionClosed, PDUStream

from .budget import SessionBudget
from .lun import (
    IN_FLIGHT,
    LogicalUnit,
    Nexus,
    SCSIResult,
    not_supported_lun_result,
    report_luns_data,
)
from .session import Session

if TYPE_CHECKING:
    from .server import TargetServer

log = logging.getLogger(__name__)

MAX_PENDING_COMMANDS = 256
MAX_POSTED_BYTES = 8 << 20  # answered but unsent read data before the reader waits


class Drop(Exception):
    """A protocol violation after which the connection is closed."""


@dataclass
class Task:
    cmd: P.SCSICommand
    lun_number: int
    buffer: bytearray | None = None  # write data, taken when its first byte arrives
    reserved: int = 0  # bytes of the session's budget this task holds
    unsolicited_limit: int = 0
    unsolicited_done: trio.Event = field(default_factory=trio.Event)
    burst_done: trio.Event = field(default_factory=trio.Event)
    ttt: int = RESERVED_TAG
    burst_start: int = 0
    burst_end: int = 0
    next_datasn: int = 0
    # bytes received so far; Data-Out must continue here, no gaps (DataPDUInOrder)
    next_offset: int = 0
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


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
        self._buffers: BufferPool = server.write_buffers  # recycled after each command
        self.budget: SessionBudget = server.budget.session(server.buffer_limits.session_budget)
        self._data_out_timeout = server.buffer_limits.data_out_timeout
        self.local = local
        self.session: Session | None = None
        self.statsn = 0x1000
        self.tasks: dict[int, Task] = {}
        self._soon: set[int] = set()  # reads waiting for io_uring, answered on completion
        self.pending: dict[int, P.SCSICommand] = {}
        self._ttt = 0x100
        self._nursery: trio.Nursery | None = None
        self._text = TextAssembler()
        self._nop_ttt: int | None = None
        self._closing = False
        self._flush_wanted = trio.Event()  # responses were posted for the flusher to send
        self.scope = trio.CancelScope()

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        with self.scope:
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    try:
                        if await self._login():
                            if self.session is not None and self.session.discovery:
                                await self._discovery()
                            else:
                                await self._full_feature()
                    except ConnectionClosed as exc:
                        log.debug("%s: %s", self.peer, printable(exc))
                    except PDUFormatError as exc:
                        log.warning("%s: dropping connection: malformed PDU: %s", self.peer,
                                    printable(exc))
                    except (Drop, NegotiationError) as exc:
                        log.warning("%s: dropping connection: %s", self.peer, printable(exc))
                    finally:
                        nursery.cancel_scope.cancel()
            finally:
                self._cleanup()
                self.budget.close()  # answers queued but unsent are dropped with the stream
                await self.pdus.aclose()

    async def _discovery(self) -> None:
        """A discovery session: it may answer SendTargets for a while, not hold a place
        for ever (``Limits.discovery_idle``, ``discovery_lifetime``)."""
        assert self.session is not None
        limits = self.server.limits
        idle = trio.CancelScope(deadline=trio.current_time() + limits.discovery_idle)
        self._idle = idle
        with trio.move_on_after(limits.discovery_lifetime) as lifetime, idle:
            await self._full_feature()
        if idle.cancelled_caught:
            log.info("%s: discovery session %d closed: idle for %gs", self.peer,
                     self.session.tsih, limits.discovery_idle)
        elif lifetime.cancelled_caught:
            log.info("%s: discovery session %d closed: open for %gs, the longest allowed",
                     self.peer, self.session.tsih, limits.discovery_lifetime)

    async def _receive(self) -> P.PDU:
        pdu = await self.pdus.receive_pdu()
        if self._idle is not None:
            self._idle.deadline = trio.current_time() + self.server.limits.discovery_idle
        return pdu

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
        return bool(self.tasks or self._soon)

    # ---------------------------------------------------------------- login

    async def _login(self) -> bool:
        server = self.server
        peer_ip = self.peer.rsplit(":", 1)[0].strip("[]")
        machine: TargetLogin | None = None
        expcmdsn = 0
        depth = 32
        with trio.move_on_after(server.limits.login_timeout) as timeout:
            while True:
                req = await self.pdus.receive_pdu()
                if not isinstance(req, P.LoginRequest):
                    raise Drop(f"expected a Login request, got {type(req).__name__}")
                if machine is None:
                    expcmdsn = req.cmdsn
                    if req.tsih != 0:
                        rsp = P.LoginResponse(
                            itt=req.itt, isid=req.isid, tsih=req.tsih, statsn=self.statsn,
                            expcmdsn=expcmdsn, maxcmdsn=expcmdsn,
                            status_class=LoginStatus.SESSION_DOES_NOT_EXIST.status_class,
                            status_detail=LoginStatus.SESSION_DOES_NOT_EXIST.detail)
                        await self.pdus.send_pdu(rsp)
                        log.info("%s: refused connection to existing session %d "
                                 "(one connection per session)", self.peer, req.tsih)
                        return False
                    machine = server.login_machine(
                        peer_ip, self.local.rsplit(":", 1)[0].strip("[]"), bytes(req.isid))
                    machine.assign_tsih(server.sessions.allocate_tsih())
                cfg = machine.config
                if cfg is not None and cfg.target_name in server.targets:
                    depth = server.targets[cfg.target_name].queued_commands
                was_authenticated = machine.authenticated
                rsp = machine.receive(req, statsn=self.statsn, expcmdsn=expcmdsn,
                                      maxcmdsn=sn_add(expcmdsn, depth - 1))
                self.statsn = sn_add(self.statsn, 1)
                if machine.failed:
                    # names are checked (an invalid one is the failure), the target is
                    # shown as asked for, escaped; the failure text is escaped already
                    log.warning("%s: login of %s to %s refused: %s", self.peer,
                                machine.initiator_name or "?", machine.target_name
                                or printable(machine.requested_target, 240) or "?",
                                machine.failure)
                    await trio.sleep(server.login_hold(peer_ip, failed=True))
                    await self.pdus.send_pdu(rsp)
                    return False
                if machine.authenticated and not was_authenticated:
                    # The answer that tells a guess right is held as long as a wrong one.
                    await trio.sleep(server.login_hold(peer_ip, failed=False))
                await self.pdus.send_pdu(rsp)
                if machine.done:
                    break
        if timeout.cancelled_caught or machine is None:
            raise Drop("login did not complete in time")
        params = machine.params
        refused = server.check_session(machine.target_name, machine.initiator_name,
                                       machine.isid, machine.auth_user)
        if refused is not None:  # another login took the session while we answered
            raise Drop(f"login of {machine.initiator_name} refused: {refused}")
        self.pdus.max_data_segment_length = max(params.max_recv_data_segment_length, 8192)
        self.pdus.header_digest = params.header_digest
        self.pdus.data_digest = params.data_digest
        discovery = machine.session_type == "Discovery"
        target = None if discovery else server.targets[machine.target_name]
        nexus = None if discovery else Nexus(machine.initiator_name, machine.isid,
                                             machine.target_name, server.tpgt)
        if not discovery:
            old = server.sessions.find(machine.initiator_name, machine.isid, machine.target_name)
            if old is not None:
                log.info("%s: reinstating session %d of %s", self.peer, old.tsih,
                         machine.initiator_name)
                for conn in list(old.connections):
                    conn.close()
                server.sessions.remove(old)
                if old.nexus is not None:
                    for lu in old.luns.values():
                        lu.nexus_lost(old.nexus)
                old.connections.clear()
        self.session = Session(
            tsih=machine.tsih, isid=machine.isid, initiator_name=machine.initiator_name,
            target_name=machine.target_name, params=params, nexus=nexus,
            luns=target.luns if target else {},
            window=CommandWindow(expcmdsn, depth), discovery=discovery,
            chap_user=machine.auth_user)
        self.session.connections.add(self)
        server.sessions.add(self.session)
        if not discovery:
            # a proven session: its place among the unproven goes to the next one
            server.release(self.address_key)
            self.unproven = False
            self.pdus.receive_chunk = RECEIVE_CHUNK
        log.info("%s: %s logged in to %s (session %d%s%s%s)", self.peer,
                 machine.initiator_name, machine.target_name or "discovery", machine.tsih,
                 f", CHAP user {machine.auth_user}" if machine.auth_user else "",
                 ", header digest" if params.header_digest else "",
                 ", data digest" if params.data_digest else "")
        return True

    # ---------------------------------------------------------------- full feature phase

    async def _full_feature(self) -> None:
        assert self.session is not None and self._nursery is not None
        target = self.server.targets.get(self.session.target_name)
        if target is not None and target.nop_interval:
            self._nursery.start_soon(self._keepalive, target.nop_interval,
                                     target.nop_timeout or target.nop_interval)
        self._nursery.start_soon(self._flusher)
        self.pdus.placement = self._place_data_out
        while True:
            pdu = await self._receive()
            if isinstance(pdu, P.SCSICommand):
                await self._on_command(pdu)
                if self.pdus.backlog > MAX_POSTED_BYTES:
                    # Answers to reads piling up unsent: the initiator is not reading.
                    # Stop reading its commands until they are written (TCP back-pressure).
                    await self.pdus.flush()
            elif isinstance(pdu, P.DataOut):
                self._on_data_out(pdu)
            elif isinstance(pdu, P.NopOut):
                await self._on_nop_out(pdu)
            elif isinstance(pdu, P.TextRequest):
                await self._on_text(pdu)
            elif isinstance(pdu, P.TaskManagementRequest):
                await self._on_task_management(pdu)
            elif isinstance(pdu, P.LogoutRequest):
                await self._on_logout(pdu)
                return
            elif isinstance(pdu, P.LoginRequest):
                await self._reject(pdu, RejectReason.PROTOCOL_ERROR)
                raise Drop("Login request during full-feature phase")
            else:
                await self._reject(pdu, RejectReason.COMMAND_NOT_SUPPORTED)

    async def _keepalive(self, interval: float, timeout: float) -> None:
        while True:
            await trio.sleep(interval)
            self._ttt += 1
            ttt = self._ttt & 0x7FFFFFFF
            self._nop_ttt = ttt
            await self.pdus.send_pdus(
                [self._status_fields(P.NopIn(itt=RESERVED_TAG, ttt=ttt), False)])
            with trio.move_on_after(timeout):
                while self._nop_ttt == ttt:
                    await trio.sleep(0.1)
            if self._nop_ttt == ttt:
                log.warning("%s: no answer to NOP-In within %ss, closing", self.peer, timeout)
                self.close()
                return

    def _status_fields(self, pdu: P.PDU, status: bool) -> P.PDU:
        """Fill StatSN/ExpCmdSN/MaxCmdSN; StatSN advances only for status-carrying PDUs."""
        import dataclasses

        assert self.session is not None
        w = self.session.window
        fields: dict[str, int] = {"expcmdsn": w.expcmdsn, "maxcmdsn": w.maxcmdsn}
        if status:
            fields["statsn"] = self.statsn
            self.statsn = sn_add(self.statsn, 1)
        elif not isinstance(pdu, P.DataIn | P.R2T) or isinstance(pdu, P.R2T):
            fields["statsn"] = self.statsn
        return dataclasses.replace(pdu, **fields)  # type: ignore[arg-type]

    async def _send_status(self, pdus: list[P.PDU], status_last: bool = True) -> None:
        """Send PDUs, the last one carrying status.  StatSN is assigned and the PDUs are
        queued with no checkpoint in between, so StatSNs go out in order."""
        out = [self._status_fields(p, status_last and i == len(pdus) - 1)
               for i, p in enumerate(pdus)]
        await self.pdus.send_pdus(out)

    async def _reject(self, pdu: P.PDU, reason: int) -> None:
        header = bytes(pdu.encode_bhs())
        await self._send_status([P.Reject(reason=reason, data=header)], status_last=False)

    # ---------------------------------------------------------------- command ordering

    async def _on_command(self, cmd: P.SCSICommand) -> None:
        s = self.session
        assert s is not None
        if s.discovery:
            await self._reject(cmd, RejectReason.PROTOCOL_ERROR)
            return
        if cmd.immediate:
            if s.window.in_flight >= s.window.depth:
                # immediate commands bypass the window, but not its limit on tasks
                self._answer(cmd, P.decode_lun(cmd.lun), SCSIResult(Status.TASK_SET_FULL))
                return
            self._start(cmd)
            return
        verdict = s.window.classify(cmd.cmdsn)
        if verdict is Admission.DROP:
            self._dropped += 1
            log.log(logging.INFO if self._dropped == 1 else logging.DEBUG,
                    "%s: dropping command with CmdSN %d outside the window %d..%d%s",
                    self.peer, cmd.cmdsn, s.window.expcmdsn, s.window.maxcmdsn,
                    " (more on this connection are logged at debug level)"
                    if self._dropped == 1 else "")
            return
        if verdict is Admission.LATER:
            if len(self.pending) >= MAX_PENDING_COMMANDS:
                raise Drop("too many out-of-order commands")
            if _placed_buffer(cmd.data, cmd.expected_length) is not None:
                # keep only the data, not a buffer for all of the command's: a command
                # that waits holds no more memory than it brought
                cmd = replace(cmd, data=bytes(cmd.data))
            self.pending[cmd.cmdsn] = cmd
            return
        s.window.advance()
        self._start(cmd)
        while s.window.expcmdsn in self.pending:
            nxt = self.pending.pop(s.window.expcmdsn)
            s.window.advance()
            self._start(nxt)

    def _start(self, cmd: P.SCSICommand) -> None:
        assert self._nursery is not None and self.session is not None
        if cmd.itt in self.tasks or cmd.itt in self._soon:
            raise Drop(f"initiator task tag 0x{cmd.itt:08x} reused while still active")
        params = self.session.params
        edtl = cmd.expected_length
        data_len = len(cmd.data)
        if data_len and not (cmd.write and params.immediate_data):
            raise Drop("unexpected immediate data")
        if cmd.write and edtl and data_len > min(edtl, params.first_burst_length):
            raise Drop("immediate data longer than FirstBurstLength")
        placed = _placed_buffer(cmd.data, edtl)
        if cmd.read != cmd.write and (cmd.read or (cmd.final and data_len == edtl)) \
                and self._run_now(cmd):
            if placed is not None:
                self._buffers.give(placed)  # the write is done: nothing refers to it now
            return  # a read, or a write whose data all came with it, done at once
        lun_number = P.decode_lun(cmd.lun)
        unsolicited = cmd.write and edtl and not params.initial_r2t and not cmd.final
        unasked = bool(cmd.write and edtl and (data_len or unsolicited))
        early = self._refuse_early(cmd, lun_number)
        size = edtl + self._read_buffer(cmd, lun_number) if unasked else 0
        if early is None and unasked and not self.budget.try_take(size):
            # Its data comes unasked, and has nowhere to go: the initiator retries later.
            self._note_timeout("no buffer budget for the unsolicited data of task "
                               f"0x{cmd.itt:08x}: answered BUSY")
            early = SCSIResult(Status.BUSY)
        if early is not None:
            if placed is not None:
                self._buffers.give(placed)
            self._answer(cmd, lun_number, early)  # any Data-Out that follows is ignored
            return
        task = Task(cmd=cmd, lun_number=lun_number)
        if cmd.write and edtl:
            if unasked:
                task.reserved = size  # taken above
            if placed is not None:
                task.buffer = placed  # the immediate data was received into it
            elif data_len:
                # every byte is overwritten by the data the initiator sends before the
                # command runs (all of EDTL is collected first), so a reused buffer is safe
                task.buffer = self._buffers.take(edtl)
                task.buffer[:data_len] = cmd.data
            task.next_offset = data_len
            if unsolicited:
                task.unsolicited_limit = min(params.first_burst_length, edtl)
            else:
                task.unsolicited_done.set()
        else:
            task.unsolicited_done.set()
        self.tasks[cmd.itt] = task
        self.session.window.in_flight += 1
        self._nursery.start_soon(self._run, task)

    def _refuse_early(self, cmd: P.SCSICommand, lun_number: int) -> SCSIResult | None:
        """The answer for a command that fails before its data matters (no such LUN for
        a write, a transfer longer than the Block Limits page allows, out of range...),
        given before any buffer is reserved or any data solicited; None otherwise."""
        assert self.session is not None and self.session.nexus is not None
        lu = self.session.luns.get(lun_number)
        if lu is None:
            return not_supported_lun_result() if cmd.write and cmd.expected_length else None
        return lu.refuse_early(cmd.cdb, self.session.nexus, cmd.expected_length, cmd.write)

    def _read_buffer(self, cmd: P.SCSICommand, lun_number: int) -> int:
        """The bytes a command reads into a buffer of its own (see buffer_length)."""
        assert self.session is not None
        lu = self.session.luns.get(lun_number)
        return lu.buffer_length(cmd.cdb) if lu is not None else 0

    def _note_timeout(self, what: str) -> None:
        """Log a command ended for want of data or budget: the first of a connection as a
        warning, the others at debug level (a hostile peer could fill the log)."""
        self._timeouts += 1
        log.log(logging.WARNING if self._timeouts == 1 else logging.DEBUG, "%s: %s%s",
                self.peer, what, " (more on this connection are logged at debug level)"
                if self._timeouts == 1 else "")

    def _run_now(self, cmd: P.SCSICommand) -> bool:
        """Answer a read served from the page cache, or a write that goes straight into
        it, right here in the reader loop: no task, no scheduler pass, and the response
        joins the next batched write.  Most of a command's cost at 4 KiB was the task
        and its wake-ups."""
        assert self.session is not None and self.session.nexus is not None
        lun_number = P.decode_lun(cmd.lun)
        lu = self.session.luns.get(lun_number)
        if lu is None:
            return False
        outcome = lu.submit(cmd.cdb, self.session.nexus, cmd.data,
                            files=cmd.read and self.pdus.sends_files, budget=self.budget,
                            done=partial(self._answer_soon, cmd, lun_number) if cmd.read else None)
        if isinstance(outcome, SCSIResult):
            self._answer(cmd, lun_number, outcome)
            return True
        if outcome is IN_FLIGHT:
            self._soon.add(cmd.itt)  # a cache miss on io_uring: answered from its completion
            self.session.window.in_flight += 1
            return True
        return False  # it needs a task: that one collects data and budget, then submits it

    def _answer(self, cmd: P.SCSICommand, lun_number: int, result: SCSIResult) -> None:
        self.pdus.post(self._response_pdus(cmd, lun_number, result), after=result.release)
        self._flush_wanted.set()

    def _answer_soon(self, cmd: P.SCSICommand, lun_number: int, result: SCSIResult) -> None:
        assert self.session is not None
        self._soon.discard(cmd.itt)
        self.session.window.in_flight -= 1
        try:
            self._answer(cmd, lun_number, result)
        except ConnectionClosed:  # the connection is gone: only recycle the buffer
            if result.release is not None:
                result.release()

    async def _flusher(self) -> None:
        """Write the responses ``_run_now`` posted, many per system call."""
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted = trio.Event()
            try:
                await self.pdus.flush(gather=False)
            except ConnectionClosed:
                self.close()
                return

    def _place_data_out(self, bhs: bytes) -> memoryview | None:
        """Where the data of a large write goes, so that the reader receives it there and
        nothing copies it afterwards: the immediate data of a WRITE into a buffer for the
        whole command (``_start`` writes from it, or keeps it as the task's buffer), a
        Data-Out into its task's buffer at the offset the task expects next.  Anything
        else (including a Data-Out that ``_on_data_out`` will refuse) takes the usual
        way."""
        op = bhs[0] & 0x3F
        dlen = int.from_bytes(bhs[5:8], "big")
        if op == Opcode.SCSI_COMMAND:
            edtl = int.from_bytes(bhs[20:24], "big")
            if not bhs[1] & 0x20 or not dlen <= edtl <= MAX_POOLED:  # W bit
                return None
            return memoryview(self._buffers.take(edtl))[:dlen]
        if op == Opcode.DATA_OUT:
            task = self.tasks.get(int.from_bytes(bhs[16:20], "big"))
            offset = int.from_bytes(bhs[40:44], "big")
            if task is None or not task.reserved or offset != task.next_offset \
                    or offset + dlen > task.cmd.expected_length:
                return None
            if task.buffer is None:  # the first byte of its data: reserved already
                task.buffer = self._buffers.take(task.cmd.expected_length)
            return memoryview(task.buffer)[offset : offset + dlen]
        return None

    def _on_data_out(self, d: P.DataOut) -> None:
        task = self.tasks.get(d.itt)
        if task is None:
            log.debug("%s: Data-Out for unknown task 0x%08x ignored", self.peer, d.itt)
            return
        n = len(d.data)
        if d.ttt == RESERVED_TAG:
            if task.unsolicited_done.is_set() or d.offset + n > task.unsolicited_limit:
                raise Drop("unsolicited Data-Out outside FirstBurstLength")
        else:
            if d.ttt != task.ttt or not task.burst_start <= d.offset <= task.burst_end \
                    or d.offset + n > task.burst_end:
                raise Drop("solicited Data-Out outside its R2T")
        if d.datasn != task.next_datasn:
            raise Drop(f"Data-Out DataSN {d.datasn}, expected {task.next_datasn}")
        if d.offset != task.next_offset:
            raise Drop(f"Data-Out at offset {d.offset}, expected {task.next_offset}")
        task.next_datasn += 1
        task.next_offset += n
        data = d.data
        if n:
            if task.buffer is None:  # its first byte of data (validated: reserved already)
                task.buffer = self._buffers.take(task.cmd.expected_length)
            if not (isinstance(data, memoryview) and data.obj is task.buffer):
                task.buffer[d.offset : d.offset + n] = data
        if d.final:
            end = task.unsolicited_limit if d.ttt == RESERVED_TAG else task.burst_end
            if task.next_offset != end:
                raise Drop(f"Data-Out sequence ended at {task.next_offset}, before {end}")
            if d.ttt == RESERVED_TAG:
                task.unsolicited_done.set()
            else:
                task.burst_done.set()

    # ---------------------------------------------------------------- command execution

    async def _run(self, task: Task) -> None:
        assert self.session is not None
        cmd = task.cmd
        window = self.session.window
        counted = True
        try:
            with task.scope:
                result = await self._execute(task)
                # out of the window before its response is built: the MaxCmdSN this
                # last answer carries must leave room, or a closed window stays closed
                window.in_flight -= 1
                counted = False
                await self._respond(task, result)
        except ConnectionClosed:
            pass
        finally:
            self.tasks.pop(cmd.itt, None)  # late Data-Out for it is ignored from now on
            if counted:
                window.in_flight -= 1
            if task.buffer is not None:
                self._buffers.give(task.buffer)
            if task.reserved:
                self.budget.give(task.reserved)

    async def _reserve(self, task: Task, size: int) -> bool:
        """Reserve ``size`` bytes for the task, waiting for them up to the Data-Out
        timeout; False if they did not come."""
        with trio.move_on_after(self._data_out_timeout):
            await self.budget.take(size)
            task.reserved += size
            return True
        s = self.budget
        self._note_timeout(
            f"no buffer budget for task 0x{task.cmd.itt:08x} ({size} bytes) within "
            f"{self._data_out_timeout:g}s: answered BUSY (the session holds {s.used} of "
            f"{s.limit} bytes, all sessions {s.server.used} of {s.server.limit})")
        return False

    async def _wait_data(self, task: Task, done: trio.Event) -> bool:
        """Wait for ``done`` while Data-Out keeps coming: False once none has arrived for
        the Data-Out timeout."""
        if done.is_set():
            return True
        while True:
            seen = task.next_offset
            with trio.move_on_after(self._data_out_timeout):
                await done.wait()
                return True
            if task.next_offset == seen:
                self._note_timeout(
                    f"no Data-Out for task 0x{task.cmd.itt:08x} within "
                    f"{self._data_out_timeout:g}s ({seen} of {task.cmd.expected_length} "
                    "bytes received): aborted with INITIATOR RESPONSE TIMEOUT")
                return False

    def _timed_out(self, task: Task) -> SCSIResult:
        assert self.session is not None
        lu = self.session.luns.get(task.lun_number)
        return SCSIResult(Status.CHECK_CONDITION, sense=build_sense(
            SenseKey.ABORTED_COMMAND, INITIATOR_RESPONSE_TIMEOUT,
            descriptor=lu is not None and lu.mode.d_sense))

    async def _collect(self, task: Task) -> SCSIResult | None:
        """Receive all of a write's data, soliciting what did not come unasked; its
        bytes are reserved first.  An answer (BUSY, INITIATOR RESPONSE TIMEOUT) if
        that fails, else None."""
        assert self.session is not None
        params = self.session.params
        edtl = task.cmd.expected_length
        # with what it reads (COMPARE AND WRITE, ORWRITE): all it needs at once
        size = edtl + self._read_buffer(task.cmd, task.lun_number)
        if not task.reserved and (not self.budget.fits(size)
                                  or not await self._reserve(task, size)):
            return SCSIResult(Status.BUSY)
        if not await self._wait_data(task, task.unsolicited_done):
            return self._timed_out(task)
        offset = task.next_offset
        r2tsn = 0
        while offset < edtl:
            length = min(params.max_burst_length, edtl - offset)
            self._ttt = (self._ttt + 1) & 0x7FFFFFFF
            task.ttt, task.burst_start, task.burst_end = self._ttt, offset, offset + length
            task.next_datasn = 0
            task.next_offset = offset
            task.burst_done = trio.Event()
            r2t = P.R2T(itt=task.cmd.itt, lun=task.cmd.lun, ttt=task.ttt, r2tsn=r2tsn,
                        offset=offset, length=length)
            await self._send_status([r2t], status_last=False)
            r2tsn += 1
            if not await self._wait_data(task, task.burst_done):
                return self._timed_out(task)
            offset = task.burst_end
        return None

    async def _execute(self, task: Task) -> SCSIResult:
        assert self.session is not None
        cmd = task.cmd
        luns = self.session.luns
        if cmd.write and cmd.expected_length:
            failed = await self._collect(task)
            if failed is not None:
                return failed
        op = cmd.cdb[0] if cmd.cdb else -1
        if op == Op.REPORT_LUNS:
            alloc = int.from_bytes(cmd.cdb[6:10], "big") if len(cmd.cdb) >= 10 else 0
            if alloc < 16:
                return self._invalid_field_result()
            return SCSIResult(data=report_luns_data(list(luns))[:alloc])
        lu: LogicalUnit | None = luns.get(task.lun_number)
        if lu is None:
            if op == Op.INQUIRY:
                data = bytearray(36)
                data[0] = 0x7F  # peripheral qualifier 3: no LU here
                data[4] = 31
                alloc = int.from_bytes(cmd.cdb[3:5], "big") if len(cmd.cdb) >= 5 else 36
                return SCSIResult(data=bytes(data[:alloc]))
            return not_supported_lun_result()
        assert self.session.nexus is not None
        need = lu.buffer_length(cmd.cdb) if not task.reserved else 0  # a write's: taken
        # a need beyond the budget is a command the unit refuses without reading
        if need and self.budget.fits(need) and not await self._reserve(task, need):
            return SCSIResult(Status.BUSY)
        data_out = memoryview(task.buffer) if task.buffer is not None else memoryview(b"")
        return await lu.execute(cmd.cdb, data_out, self.session.nexus)

    @staticmethod
    def _invalid_field_result() -> SCSIResult:
        from blockbridge.scsi.constants import INVALID_FIELD_IN_CDB, SenseKey
        from blockbridge.scsi.sense import build_sense

        return SCSIResult(Status.CHECK_CONDITION,
                          sense=build_sense(SenseKey.ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB))

    async def _respond(self, task: Task, result: SCSIResult) -> None:
        await self.pdus.send_pdus(self._response_pdus(task.cmd, task.lun_number, result))
        if result.release is not None:  # sent: the buffer may be reused
            result.release()

    def _response_pdus(self, cmd: P.SCSICommand, lun_number: int,
                       result: SCSIResult) -> list[P.PDU | WithFileData]:
        """Data-In and response PDUs for a finished command, with their sequence numbers:
        queue them before the next checkpoint so StatSNs go out in order."""
        assert self.session is not None
        edtl = cmd.expected_length
        params = self.session.params
        window = self.session.window
        expcmdsn, maxcmdsn = window.expcmdsn, window.maxcmdsn
        data = result.data if cmd.read else b""
        produced = segment_length(data)
        if cmd.write and not cmd.read:
            lu = self.session.luns.get(lun_number)
            produced = lu.data_out_length(cmd.cdb) if lu is not None else edtl
        overflow = produced > edtl
        underflow = produced < edtl
        residual = min(abs(produced - edtl), 0xFFFFFFFF)  # a CDB may ask for > 4 GiB
        sent = min(produced, edtl) if cmd.read else 0
        view = memoryview(data) if not isinstance(data, FileRange) else None
        pdus: list[P.PDU | WithFileData] = []
        chunk = params.max_xmit_data_segment_length
        collapse = result.status == Status.GOOD and not result.sense
        statsn = self.statsn
        for i, off in enumerate(range(0, sent, chunk)):
            n = min(chunk, sent - off)
            last = off + n >= sent
            with_status = last and collapse
            pdu = P.DataIn(
                itt=cmd.itt, lun=cmd.lun, datasn=i, offset=off,
                data=view[off : off + n] if view is not None else b"",
                final=last, has_status=with_status, status=result.status,
                residual_overflow=with_status and overflow,
                residual_underflow=with_status and underflow,
                residual_count=residual if with_status else 0,
                statsn=statsn if with_status else 0, expcmdsn=expcmdsn, maxcmdsn=maxcmdsn)
            if isinstance(data, FileRange):
                pdus.append(WithFileData(pdu, data.part(off, n)))
            else:
                pdus.append(pdu)
        if not (pdus and collapse):
            pdus.append(P.SCSIResponse.with_sense(
                result.sense, itt=cmd.itt, status=result.status, expdatasn=len(pdus),
                residual_overflow=overflow, residual_underflow=underflow,
                residual_count=residual if (overflow or underflow) else 0,
                statsn=statsn, expcmdsn=expcmdsn, maxcmdsn=maxcmdsn))
        self.statsn = sn_add(statsn, 1)
        return pdus

    # ---------------------------------------------------------------- other requests

    def _consume_cmdsn(self, pdu: P.NopOut | P.TextRequest | P.LogoutRequest
                       | P.TaskManagementRequest) -> None:
        assert self.session is not None
        if not pdu.immediate and pdu.cmdsn == self.session.window.expcmdsn:
            self.session.window.advance()

    async def _on_nop_out(self, nop: P.NopOut) -> None:
        self._consume_cmdsn(nop)
        if nop.itt == RESERVED_TAG:
            if nop.ttt == self._nop_ttt:
                self._nop_ttt = None
            return
        await self._send_status([P.NopIn(itt=nop.itt, ttt=RESERVED_TAG, lun=nop.lun,
                                         data=bytes(nop.data[:8192]))])

    async def _on_text(self, req: P.TextRequest) -> None:
        assert self.session is not None
        self._consume_cmdsn(req)
        self._text.add(req.data)
        if req.cont:
            await self._send_status([P.TextResponse(itt=req.itt, final=False, ttt=0x7FFF)])
            return
        pairs = decode_text(self._text.take(), allow_duplicates=True)
        answers: list[tuple[str, str]] = []
        for key, value in pairs:
            if key == "SendTargets":
                answers += self.server.send_targets(
                    value, self.session, self.peer.rsplit(":", 1)[0].strip("[]"), self.local,
                    tls=self.tls)
            else:
                answers.append((key, "NotUnderstood"))
        text = encode_text(answers)
        limit = self.session.params.max_xmit_data_segment_length
        if len(text) > limit:
            log.warning("%s: SendTargets answer truncated to %d bytes", self.peer, limit)
            text = text[:limit]
            text = text[: text.rfind(b"\0") + 1]
        await self._send_status([P.TextResponse(itt=req.itt, final=True, data=text)])

    async def _on_task_management(self, req: P.TaskManagementRequest) -> None:
        assert self.session is not None
        self._consume_cmdsn(req)
        fn = req.function
        lun_number = P.decode_lun(req.lun)
        lu = self.session.luns.get(lun_number)
        response = TaskResponse.COMPLETE
        nexus = self.session.nexus
        if fn == TaskFunction.ABORT_TASK:
            task = self.tasks.get(req.referenced_itt)
            if task is not None:
                task.scope.cancel()
            else:
                response = TaskResponse.TASK_DOES_NOT_EXIST
        elif fn in (TaskFunction.ABORT_TASK_SET, TaskFunction.CLEAR_TASK_SET):
            self._abort_lun(lun_number)
        elif fn == TaskFunction.LOGICAL_UNIT_RESET:
            if lu is None:
                response = TaskResponse.LUN_DOES_NOT_EXIST
            else:
                self._abort_lun(lun_number)
                lu.logical_unit_reset(nexus)
        elif fn in (TaskFunction.TARGET_WARM_RESET, TaskFunction.TARGET_COLD_RESET):
            self._abort_lun(None)
            for unit in self.session.luns.values():
                unit.target_reset(nexus, cold=fn == TaskFunction.TARGET_COLD_RESET)
        else:
            response = TaskResponse.NOT_SUPPORTED
        await trio.lowlevel.checkpoint()
        await self._send_status([P.TaskManagementResponse(itt=req.itt, response=response)])
        log.info("%s: task management %s on LUN %d: %s", self.peer,
                 name_of(TaskFunction, fn), lun_number, name_of(TaskResponse, response))
        if fn == TaskFunction.TARGET_COLD_RESET:
            self.close()

    def _abort_lun(self, lun_number: int | None) -> None:
        for task in list(self.tasks.values()):
            if lun_number is None or task.lun_number == lun_number:
                task.scope.cancel()
        self.pending.clear()

    async def _on_logout(self, req: P.LogoutRequest) -> None:
        self._consume_cmdsn(req)
        with trio.move_on_after(10):
            while self.tasks:
                await trio.sleep(0.01)
        response = LogoutResponseCode.SUCCESS
        if req.reason == LogoutReason.REMOVE_CONNECTION_FOR_RECOVERY:
            response = LogoutResponseCode.RECOVERY_NOT_SUPPORTED
        await self._send_status([P.LogoutResponse(itt=req.itt, response=response,
                                                  time2wait=2, time2retain=0)])


def _placed_buffer(data: object, edtl: int) -> bytearray | None:
    """The command buffer that immediate data was placed in (see _place_data_out)."""
    if isinstance(data, memoryview) and type(data.obj) is bytearray and len(data.obj) == edtl:
        return data.obj
    return None
