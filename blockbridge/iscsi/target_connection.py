"""The target side of one connection after login, sans-IO (RFC 7143 full-feature phase).

Like h11's ``Connection``: PDUs in, events out, nothing done behind the caller's back,
with time as a parameter like aioquic's (``get_timer`` / ``handle_timer``).  The machine
admits commands by CmdSN (holding those ahead of their turn), checks task tags,
immediate and unsolicited data against the negotiated limits, places and accepts
Data-Out once each, solicits the rest burst by burst with R2Ts, numbers and segments the
answers (status collapse, residuals, StatSN/ExpCmdSN/MaxCmdSN), answers NOP-Out, pings
with NOP-In, continues long Text responses and answers Logout.  The shell (a trio driver
in the target) reads PDUs, runs commands on logical units and writes what it is given.

A rule broken by the peer raises :class:`~.errors.ProtocolError` and stops the machine;
any later call raises :class:`~.errors.MachineStopped`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from .answers import command_answer
from .constants import (
    RESERVED_TAG,
    LogoutReason,
    LogoutResponseCode,
    Opcode,
    RejectReason,
    TaskFunction,
    TaskResponse,
)
from .errors import MachineStopped, NegotiationError, ProtocolError
from .framing import FileRange
from .params import SessionParams
from .pdu import (
    PDU,
    R2T,
    Buffer,
    DataIn,
    DataOut,
    LoginRequest,
    LogoutRequest,
    LogoutResponse,
    NopIn,
    NopOut,
    Reject,
    SCSICommand,
    TaskManagementRequest,
    TaskManagementResponse,
    TextRequest,
    TextResponse,
    decode_lun,
)
from .segments import segments
from .serial import sn_add
from .target_events import (
    CommandDropped,
    CommandReceived,
    DataReceived,
    DataTimedOut,
    Event,
    LogoutRequested,
    Outgoing,
    PeerSilent,
    Phase,
    Send,
    State,
    TaskManagement,
    TextRequested,
)
from .text import TextAssembler, decode_text, encode_text
from .window import Admission, CommandWindow

MAX_PENDING_COMMANDS = 256  # commands held ahead of their turn before the peer is cut off
NOP_DATA_ECHOED = 8192  # the most of a NOP-Out's data a NOP-In echoes
TASK_SET_FULL = 0x28



def _no_give(buffer: bytearray) -> None:
    pass


@dataclass(eq=False, slots=True)
class _Task:
    """A command the machine answers for: admitted, not yet answered or discarded."""

    cmd: SCSICommand
    lun: int
    phase: Phase = Phase.NONE
    buffer: bytearray | None = None  # write data, taken when its first byte arrives
    reserved: bool = False  # the shell holds budget for its data: it may be placed
    solicit: bool = False  # the shell asked for the rest of its data
    unsolicited_end: int = 0  # where unsolicited data must end
    next_offset: int = 0  # bytes received so far: Data-Out continues here, no gaps
    next_datasn: int = 0
    ttt: int = RESERVED_TAG
    burst_end: int = 0
    r2tsn: int = 0
    progress: float = 0.0  # when data last came, or the shell asked for it


class TargetConnection:
    """One connection's full-feature phase on the target (see the module docstring).

    ``take_buffer(n)``/``give_buffer(b)`` lend write buffers (a pool); ``max_placed`` is
    the largest command whose immediate data is received into a buffer of its own."""

    def __init__(
        self, params: SessionParams, *, expcmdsn: int, depth: int, statsn: int,
        now: float = 0.0, discovery: bool = False, data_out_timeout: float = 30.0,
        nop_interval: float = 0.0, nop_timeout: float = 0.0,
        take_buffer: Callable[[int], bytearray] = bytearray,
        give_buffer: Callable[[bytearray], None] = _no_give, max_placed: int = 1 << 20,
    ) -> None:
        self.params = params
        self.window = CommandWindow(expcmdsn, depth)
        self.statsn = statsn
        self.discovery = discovery
        self.state = State.FULL_FEATURE
        self._data_out_timeout = data_out_timeout
        self._take, self._give, self._max_placed = take_buffer, give_buffer, max_placed
        self._tasks: dict[int, _Task] = {}
        self._held: dict[int, SCSICommand] = {}  # CmdSN -> command ahead of its turn
        self._ttt = 0x100
        self._text = TextAssembler()
        self._text_rest: tuple[int, int, list[bytes]] | None = None  # itt, ttt, parts
        self._nop_interval = nop_interval
        self._nop_timeout = nop_timeout or nop_interval
        self._nop_ttt: int | None = None  # the ping waiting for its answer
        self._nop_at = now + nop_interval if nop_interval else None  # next ping or deadline

    # ------------------------------------------------------------------ state

    @property
    def busy(self) -> bool:
        """Commands are admitted and not yet answered or discarded."""
        return bool(self._tasks)

    def tasks(self) -> list[int]:
        return list(self._tasks)

    def _check(self) -> None:
        if self.state is not State.FULL_FEATURE:
            raise MachineStopped(f"the connection machine is {self.state.value}")

    def _fail(self, message: str, reason: RejectReason = RejectReason.PROTOCOL_ERROR,
              *, reject: bool = False) -> ProtocolError:
        self.state = State.FAILED
        return ProtocolError(message, reason, reject=reject)

    def _next_ttt(self) -> int:
        self._ttt = (self._ttt + 1) & 0x7FFFFFFF
        return self._ttt

    # ------------------------------------------------------------------ numbering

    def _numbered(self, pdu: PDU, *, status: bool) -> PDU:
        """Fill StatSN/ExpCmdSN/MaxCmdSN: StatSN advances only for a PDU that carries
        status; a Data-In without status carries none."""
        fields: dict[str, int] = {"expcmdsn": self.window.expcmdsn,
                                  "maxcmdsn": self.window.maxcmdsn}
        if status or not isinstance(pdu, DataIn):
            fields["statsn"] = self.statsn
        if status:
            self.statsn = sn_add(self.statsn, 1)
        return replace(pdu, **fields)  # type: ignore[arg-type]

    def reject(self, pdu: PDU, reason: RejectReason) -> PDU:
        """A Reject of ``pdu`` (its header returned), numbered."""
        self._check()
        return self._numbered(Reject(reason=reason, data=bytes(pdu.encode_bhs())), status=False)

    def error_reject(self, pdu: PDU, error: ProtocolError) -> PDU:
        """The Reject that goes out before the connection closes for ``error``."""
        return self._numbered(Reject(reason=error.reason, data=bytes(pdu.encode_bhs())),
                              status=False)

    # ------------------------------------------------------------------ input

    def receive(self, pdu: PDU, now: float) -> list[Event]:
        """Take one PDU from the initiator; what it asks of the shell."""
        if self.state is not State.FULL_FEATURE:
            self._check()
        if isinstance(pdu, SCSICommand):
            return self._on_command(pdu, now)
        if isinstance(pdu, DataOut):
            return self._on_data_out(pdu, now)
        if isinstance(pdu, NopOut):
            return self._on_nop_out(pdu, now)
        if isinstance(pdu, TextRequest):
            return self._on_text(pdu, now)
        if isinstance(pdu, TaskManagementRequest):
            return self._on_task_management(pdu, now)
        if isinstance(pdu, LogoutRequest):
            events = self._consume_cmdsn(pdu, now)
            return [*events, LogoutRequested(pdu.itt, pdu.reason)]
        if isinstance(pdu, LoginRequest):
            raise self._fail("Login request during full-feature phase", reject=True)
        return [Send((self.reject(pdu, RejectReason.COMMAND_NOT_SUPPORTED),))]

    def _consume_cmdsn(self, pdu: NopOut | TextRequest | LogoutRequest
                       | TaskManagementRequest, now: float) -> list[Event]:
        """A non-immediate request other than a command takes its CmdSN in turn; the
        commands held behind it may then start."""
        if pdu.immediate or pdu.cmdsn != self.window.expcmdsn:
            return []
        self.window.advance()
        return self._release_held(now)

    def _release_held(self, now: float) -> list[Event]:
        events: list[Event] = []
        while self.window.expcmdsn in self._held:
            cmd = self._held.pop(self.window.expcmdsn)
            self.window.advance()
            events += self._start(cmd, now)
        return events

    def _on_command(self, cmd: SCSICommand, now: float) -> list[Event]:
        params = self.params
        if self.discovery:
            self._give_placed(self._placed(cmd))
            return [Send((self.reject(cmd, RejectReason.PROTOCOL_ERROR),))]
        data_len = len(cmd.data)
        if data_len and not (cmd.write and params.immediate_data):
            raise self._fail("unexpected immediate data")
        if cmd.write and cmd.expected_length \
                and data_len > min(cmd.expected_length, params.first_burst_length):
            raise self._fail("immediate data longer than FirstBurstLength")
        if cmd.immediate:
            if self.window.full:  # immediate commands pass the window, not its task limit
                self._give_placed(self._placed(cmd))
                refused = self._response(_Task(cmd, decode_lun(cmd.lun)), TASK_SET_FULL)
                return [Send(tuple(refused))]
            return self._start(cmd, now)
        verdict = self.window.classify(cmd.cmdsn)
        if verdict is Admission.DROP:
            self._give_placed(self._placed(cmd))
            return [CommandDropped(cmd.cmdsn, self.window.expcmdsn, self.window.maxcmdsn)]
        if verdict is Admission.LATER:
            if len(self._held) >= MAX_PENDING_COMMANDS:
                raise self._fail("too many out-of-order commands")
            placed = self._placed(cmd)
            if placed is not None:
                # keep only the data, not a buffer for all of the command's: a command
                # that waits holds no more memory than it brought
                cmd = replace(cmd, data=bytes(cmd.data))
                self._give(placed)
            self._held[cmd.cmdsn] = cmd
            return []
        self.window.advance()
        events = self._start(cmd, now)
        if self._held:
            events += self._release_held(now)
        return events

    def _placed(self, cmd: SCSICommand) -> bytearray | None:
        """The buffer for all of the command that its immediate data was received into
        (see ``place``), if it was."""
        data = cmd.data
        if isinstance(data, memoryview) and type(data.obj) is bytearray \
                and len(data.obj) == cmd.expected_length:
            return data.obj
        return None

    def _give_placed(self, placed: bytearray | None) -> None:
        if placed is not None:
            self._give(placed)

    def _start(self, cmd: SCSICommand, now: float) -> list[Event]:
        if cmd.itt in self._tasks:
            raise self._fail(f"initiator task tag 0x{cmd.itt:08x} reused while still active")
        edtl = cmd.expected_length
        data_len = len(cmd.data)
        task = _Task(cmd, decode_lun(cmd.lun), progress=now)
        self._tasks[cmd.itt] = task
        self.window.in_flight += 1
        write = cmd.write and edtl > 0
        complete = not write or (cmd.final and data_len == edtl)
        unsolicited = write and not self.params.initial_r2t and not cmd.final
        unasked = write and bool(data_len or unsolicited)
        if write:
            task.next_offset = data_len
            task.reserved = unasked
            # immediate data not placed stays in the command until a buffer is due: none
            # is taken before the shell reserved its budget (or refused the command)
            task.buffer = self._placed(cmd)
            if complete:
                task.phase = Phase.COMPLETE
            elif unsolicited:
                task.phase = Phase.UNSOLICITED
                task.unsolicited_end = min(self.params.first_burst_length, edtl)
            else:
                task.phase = Phase.WAITING
        data: Buffer = cmd.data
        return [CommandReceived(cmd.itt, cmd, task.lun, data, complete, unasked)]

    def _buffer(self, task: _Task) -> bytearray:
        """The command's buffer, taken when its data first needs it, with the immediate
        data copied in.  Every byte is overwritten by the data the initiator sends before
        the command runs (all of EDTL is collected first), so a reused buffer is safe."""
        if task.buffer is None:
            task.buffer = self._take(task.cmd.expected_length)
            if task.cmd.data:
                task.buffer[: len(task.cmd.data)] = task.cmd.data
        return task.buffer

    def place(self, bhs: bytes) -> memoryview | None:
        """Where the data segment of the PDU whose header is ``bhs`` goes, so that it is
        received there and never copied: the immediate data of a WRITE into a buffer for
        all of the command, a Data-Out into its command's buffer at the offset it must
        continue at.  None: the usual way (anything ``receive`` will refuse goes so)."""
        if self.state is not State.FULL_FEATURE:
            return None
        op = bhs[0] & 0x3F
        dlen = int.from_bytes(bhs[5:8], "big")
        if op == Opcode.SCSI_COMMAND:
            edtl = int.from_bytes(bhs[20:24], "big")
            if not bhs[1] & 0x20 or not dlen <= edtl <= self._max_placed:  # W bit
                return None
            return memoryview(self._take(edtl))[:dlen]
        if op == Opcode.DATA_OUT:
            task = self._tasks.get(int.from_bytes(bhs[16:20], "big"))
            offset = int.from_bytes(bhs[40:44], "big")
            if task is None or not task.reserved or offset != task.next_offset \
                    or task.phase not in (Phase.UNSOLICITED, Phase.BURST) \
                    or offset + dlen > task.cmd.expected_length:
                return None
            return memoryview(self._buffer(task))[offset : offset + dlen]
        return None

    def _on_data_out(self, d: DataOut, now: float) -> list[Event]:
        task = self._tasks.get(d.itt)
        if task is None or task.phase is Phase.ABORTED:
            return []  # for a command answered or aborted already: ignored
        n = len(d.data)
        if d.ttt == RESERVED_TAG:
            if task.phase is not Phase.UNSOLICITED or d.offset + n > task.unsolicited_end:
                raise self._fail("unsolicited Data-Out outside FirstBurstLength")
        elif task.phase is not Phase.BURST or d.ttt != task.ttt \
                or d.offset + n > task.burst_end:
            raise self._fail("solicited Data-Out outside its R2T")
        if d.datasn != task.next_datasn:
            raise self._fail(f"Data-Out DataSN {d.datasn}, expected {task.next_datasn}")
        if d.offset != task.next_offset:
            raise self._fail(f"Data-Out at offset {d.offset}, expected {task.next_offset}")
        task.next_datasn += 1
        task.next_offset += n
        task.progress = now
        if n:
            buffer = self._buffer(task)
            data = d.data
            if not (isinstance(data, memoryview) and data.obj is buffer):
                buffer[d.offset : d.offset + n] = data  # not placed: copied once
        if not d.final:
            return []
        end = task.unsolicited_end if task.phase is Phase.UNSOLICITED else task.burst_end
        if task.next_offset != end:
            raise self._fail(f"Data-Out sequence ended at {task.next_offset}, before {end}")
        return self._sequence_done(task, now)

    def _sequence_done(self, task: _Task, now: float) -> list[Event]:
        """A sequence of Data-Out ended (or none was due): all of the data, or an R2T for
        the next burst once the shell has asked for it."""
        if task.next_offset >= task.cmd.expected_length:
            task.phase = Phase.COMPLETE
            return [DataReceived(task.cmd.itt, memoryview(self._buffer(task)))]
        task.phase = Phase.WAITING
        if not task.solicit:
            return []
        return [Send((self._r2t(task, now),))]

    def _r2t(self, task: _Task, now: float) -> PDU:
        offset = task.next_offset
        length = min(self.params.max_burst_length, task.cmd.expected_length - offset)
        task.phase = Phase.BURST
        task.ttt, task.burst_end = self._next_ttt(), offset + length
        task.next_datasn = 0
        task.progress = now
        r2t = R2T(itt=task.cmd.itt, lun=task.cmd.lun, ttt=task.ttt, r2tsn=task.r2tsn,
                  offset=offset, length=length)
        task.r2tsn += 1
        return self._numbered(r2t, status=False)

    def solicit(self, itt: int, now: float) -> list[Event]:
        """The shell holds the budget for the command's data and wants it: the R2T for its
        next burst if the unsolicited data is over (or later, when it is), or the data
        itself if it is all in already.  The Data-Out timeout runs from now."""
        self._check()
        task = self._tasks[itt]
        task.reserved = task.solicit = True
        task.progress = now
        if task.phase is Phase.COMPLETE:
            return [DataReceived(itt, memoryview(self._buffer(task)))]
        if task.phase is Phase.WAITING:
            return self._sequence_done(task, now)
        return []

    # ------------------------------------------------------------------ answers

    def respond(self, itt: int, status: int, data: Buffer | FileRange = b"",
                sense: bytes = b"", *, written: int | None = None) -> list[Outgoing]:
        """Data-In and SCSI Response PDUs for a finished command, numbered: send them in
        this order, before any PDU made later.  ``data`` is what a read produced (sent up
        to the expected length); ``written`` what a write's CDB transfers (for its
        residual).  The command is forgotten (its buffer given back: send no PDU that
        refers to it after the next call)."""
        if self.state is not State.FULL_FEATURE:
            self._check()
        task = self._tasks.pop(itt)
        self.window.in_flight -= 1
        if task.buffer is not None:
            self._give(task.buffer)
        return self._response(task, status, data, sense, written=written)

    def _response(self, task: _Task, status: int, data: Buffer | FileRange = b"",
                  sense: bytes = b"", *, written: int | None = None) -> list[Outgoing]:
        statsn = self.statsn
        self.statsn = (statsn + 1) & 0xFFFFFFFF
        window = self.window
        return command_answer(task.cmd, status, data, sense, written=written, statsn=statsn,
                              expcmdsn=window.expcmdsn, maxcmdsn=window.maxcmdsn,
                              max_segment=self.params.max_xmit_data_segment_length)

    def discard(self, itt: int) -> None:
        """A command ends without an answer (aborted): forget it, give its buffer back."""
        task = self._tasks.pop(itt, None)
        if task is None:
            return
        self.window.in_flight -= 1
        if task.buffer is not None:
            self._give(task.buffer)

    # ------------------------------------------------------------------ other requests

    def _on_nop_out(self, nop: NopOut, now: float) -> list[Event]:
        events = self._consume_cmdsn(nop, now)
        if nop.itt == RESERVED_TAG:  # the answer to a ping
            if nop.ttt == self._nop_ttt and self._nop_ttt is not None:
                self._nop_ttt = None
                self._nop_at = now + self._nop_interval
            return events
        answer = NopIn(itt=nop.itt, ttt=RESERVED_TAG, lun=nop.lun,
                       data=bytes(nop.data[:NOP_DATA_ECHOED]))
        return [*events, Send((self._numbered(answer, status=True),))]

    def _on_text(self, req: TextRequest, now: float) -> list[Event]:
        events = self._consume_cmdsn(req, now)
        rest = self._text_rest
        if rest is not None and req.ttt != RESERVED_TAG:
            itt, ttt, parts = rest
            if (req.itt, req.ttt) != (itt, ttt):
                raise self._fail("Text request continues an answer that is not pending")
            return [*events, Send((self._text_part(itt, ttt, parts),))]
        self._text_rest = None  # a new request ends any answer left unasked for
        try:
            self._text.add(req.data)
        except NegotiationError as exc:
            raise self._fail(str(exc)) from None
        if req.cont:
            more = TextResponse(itt=req.itt, final=False, ttt=0x7FFF)
            return [*events, Send((self._numbered(more, status=True),))]
        try:
            pairs = decode_text(self._text.take(), allow_duplicates=True)
        except NegotiationError as exc:
            raise self._fail(f"malformed text request: {exc}") from None
        return [*events, TextRequested(req.itt, tuple(pairs))]

    def text_answer(self, itt: int, pairs: list[tuple[str, str]]) -> list[PDU]:
        """The first Text Response of the answer ``pairs``; an answer longer than the
        initiator's MaxRecvDataSegmentLength continues (F clear, a TTT) in the responses
        to its next empty requests, never truncated."""
        self._check()
        text = encode_text(pairs)
        size = self.params.max_xmit_data_segment_length
        parts = [text[off : off + n] for off, n, _ in segments(0, len(text), size)] or [b""]
        ttt = self._next_ttt() if len(parts) > 1 else RESERVED_TAG
        return [self._text_part(itt, ttt, parts)]

    def _text_part(self, itt: int, ttt: int, parts: list[bytes]) -> PDU:
        part, rest = parts[0], parts[1:]
        self._text_rest = (itt, ttt, rest) if rest else None
        response = TextResponse(
            itt=itt, final=not rest, cont=bool(rest) and not part.endswith(b"\0"),
            ttt=ttt if rest else RESERVED_TAG, data=part)
        return self._numbered(response, status=True)

    def _on_task_management(self, req: TaskManagementRequest, now: float) -> list[Event]:
        events = self._consume_cmdsn(req, now)
        fn = req.function
        lun = decode_lun(req.lun)
        response = TaskResponse.COMPLETE
        abort: list[int] = []
        if fn == TaskFunction.ABORT_TASK:
            if req.referenced_itt in self._tasks:
                abort.append(req.referenced_itt)
            else:
                response = TaskResponse.TASK_DOES_NOT_EXIST
        elif fn in (TaskFunction.ABORT_TASK_SET, TaskFunction.CLEAR_TASK_SET,
                    TaskFunction.LOGICAL_UNIT_RESET):
            abort = [itt for itt, t in self._tasks.items() if t.lun == lun]
        elif fn in (TaskFunction.TARGET_WARM_RESET, TaskFunction.TARGET_COLD_RESET):
            abort = list(self._tasks)
        else:
            response = TaskResponse.NOT_SUPPORTED
        if fn != TaskFunction.ABORT_TASK and response == TaskResponse.COMPLETE:
            self._held.clear()  # commands held for their turn go with the task set
        return [*events, TaskManagement(req.itt, fn, lun, tuple(abort), response)]

    def abort(self, itts: tuple[int, ...] | list[int]) -> None:
        """Stop accepting data for these tasks: the shell ends them, then ``discard``s."""
        for itt in itts:
            task = self._tasks.get(itt)
            if task is not None:
                task.phase = Phase.ABORTED

    def tmf_response(self, itt: int, response: TaskResponse) -> PDU:
        self._check()
        return self._numbered(TaskManagementResponse(itt=itt, response=response), status=True)

    def logout_response(self, itt: int, reason: int) -> PDU:
        """The answer to a Logout request; the machine takes nothing more after it."""
        self._check()
        code = LogoutResponseCode.SUCCESS
        if reason == LogoutReason.REMOVE_CONNECTION_FOR_RECOVERY:
            code = LogoutResponseCode.RECOVERY_NOT_SUPPORTED
        pdu = self._numbered(LogoutResponse(itt=itt, response=code, time2wait=2,
                                            time2retain=0), status=True)
        self.state = State.LOGGED_OUT
        return pdu

    # ------------------------------------------------------------------ time

    def get_timer(self) -> float | None:
        """When ``handle_timer`` has something to do next (it may find nothing to do
        then: deadlines only move later meanwhile); None: nothing is timed."""
        if self.state is not State.FULL_FEATURE:
            return None
        when = [t.progress + self._data_out_timeout for t in self._tasks.values()
                if t.solicit and t.phase in (Phase.BURST, Phase.UNSOLICITED)]
        if self._nop_at is not None:
            when.append(self._nop_at)
        return min(when) if when else None

    def handle_timer(self, now: float) -> list[Event]:
        """What is due at ``now``: a NOP-In ping to send, a silent peer, commands that
        waited too long for their Data-Out (they are aborted: answer or discard them)."""
        self._check()
        events: list[Event] = []
        for itt, task in self._tasks.items():
            if task.solicit and task.phase in (Phase.BURST, Phase.UNSOLICITED) \
                    and now >= task.progress + self._data_out_timeout:
                task.phase = Phase.ABORTED
                events.append(DataTimedOut(itt, task.next_offset, task.cmd.expected_length))
        if self._nop_at is not None and now >= self._nop_at:
            if self._nop_ttt is not None:
                self._nop_at = None
                events.append(PeerSilent(self._nop_timeout))
            else:
                self._nop_ttt = self._next_ttt()
                self._nop_at = now + self._nop_timeout
                ping = NopIn(itt=RESERVED_TAG, ttt=self._nop_ttt)
                events.append(Send((self._numbered(ping, status=False),)))
        return events
