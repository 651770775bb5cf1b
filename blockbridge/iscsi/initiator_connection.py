"""The initiator's side of the full-feature phase as a sans-IO machine.

In the style of h11's ``Connection``: the shell hands it every PDU it receives
(``receive``) and the time (``now``); the machine answers with events (a command done,
a NOP or Text answered, a rejection, an asynchronous message) and with PDUs to send
(``data_to_send``: Data-Out for an R2T, a NOP-Out for the target's ping, commands the
command window held back).  Commands are started with ``submit``, which numbers them and
returns their PDUs at once when the window is open.  Time enters only as a parameter:
``get_timer`` says when ``handle_timer`` wants to be called (NOP-Out pings and their
timeout).

Every RFC 7143 rule of the initiator's full-feature phase is here: CmdSN numbering and
the command window (§4.2.2.1), ExpStatSN, immediate and unsolicited data (§13.10,
§13.11, §13.14), Data-In placement and residuals (§11.7, §11.4.5), R2T answers
(§11.8), NOP-In pings (§11.19), Text continuation (§11.10) and Reject (§11.17).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from . import pdu as P
from .constants import RESERVED_TAG, LogoutReason, Opcode
from .params import SessionParams
from .pdu import Buffer
from .segments import segments
from .serial import sn_add, sn_le, sn_lt
from .text import TextAssembler, decode_text, encode_text


class ConnectionError_(Exception):
    """The target broke the protocol; the machine is stopped (the message says how)."""


class Closed(Exception):
    """The machine was stopped (by ``close`` or a protocol error) and takes no more."""


class Kind(enum.Enum):
    COMMAND = "SCSI command"
    NOP = "NOP-Out"
    TEXT = "Text"
    LOGOUT = "Logout"
    TASK_MANAGEMENT = "task management"


@dataclass(eq=False)
class Response:
    """The outcome of a SCSI command: status, sense data and the data read."""

    status: int
    sense: bytes = b""
    data: bytearray = field(default_factory=bytearray)
    received: int = 0
    residual: int = 0
    overflow: bool = False
    underflow: bool = False


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class CommandDone:
    itt: int
    response: Response


@dataclass(frozen=True, slots=True)
class RequestDone:
    """A NOP-Out, Logout or task management request was answered with ``pdu``."""

    itt: int
    pdu: P.PDU


@dataclass(frozen=True, slots=True)
class TextDone:
    itt: int
    pairs: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Rejected:
    itt: int
    reason: int


@dataclass(frozen=True, slots=True)
class AsyncEventReceived:
    pdu: P.AsyncMessage


@dataclass(frozen=True, slots=True)
class PeerSilent:
    """No answer to a NOP-Out ping within the timeout: the connection is dead."""

    reason: str


Event = CommandDone | RequestDone | TextDone | Rejected | AsyncEventReceived | PeerSilent


@dataclass(eq=False, slots=True)
class _Task:
    kind: Kind
    lun: int = 0  # the encoded LUN field
    buffer: bytearray | None = None  # where read data goes
    received: int = 0
    data_out: memoryview | None = None
    text: TextAssembler | None = None


class InitiatorConnection:
    """One connection of a session (ERL 0), after login."""

    def __init__(self, params: SessionParams, *, cmdsn: int, expcmdsn: int, maxcmdsn: int,
                 statsn: int, now: float = 0.0, nop_interval: float | None = None,
                 nop_timeout: float = 5.0) -> None:
        self.params = params
        self.cmdsn = cmdsn
        self.expcmdsn = expcmdsn
        self.maxcmdsn = maxcmdsn
        self.expstatsn = sn_add(statsn, 1)
        self.nop_interval = nop_interval
        self.nop_timeout = nop_timeout
        self._itt = 1
        self._tasks: dict[int, _Task] = {}
        self._held: deque[tuple[int, Callable[[int], list[P.PDU]]]] = deque()
        self._out: list[P.PDU] = []
        self._last_heard = now
        self._ping: tuple[int, float] | None = None  # (itt, sent at) of our NOP-Out ping
        self._stopped: str | None = None
        self._dispatch: dict[type[P.PDU], Callable[[P.PDU], Event | None]] = {
            P.DataIn: self._data_in,  # type: ignore[dict-item]
            P.SCSIResponse: self._scsi_response,  # type: ignore[dict-item]
            P.R2T: self._r2t,  # type: ignore[dict-item]
            P.NopIn: self._nop_in,  # type: ignore[dict-item]
            P.TextResponse: self._text_response,  # type: ignore[dict-item]
            P.LogoutResponse: self._answered,
            P.TaskManagementResponse: self._answered,
            P.Reject: self._reject,  # type: ignore[dict-item]
            P.AsyncMessage: self._async,  # type: ignore[dict-item]
        }

    # ---------------------------------------------------------------- state

    @property
    def stopped(self) -> str | None:
        """Why the machine stopped, or None while it runs."""
        return self._stopped

    @property
    def outstanding(self) -> int:
        """Requests sent (or held by the window) and not yet answered."""
        return len(self._tasks)

    @property
    def has_output(self) -> bool:
        """``data_to_send`` has PDUs."""
        return bool(self._out)

    def window_open(self) -> bool:
        """A command submitted now goes out at once (the target's window has room)."""
        return not self._held and sn_le(self.cmdsn, self.maxcmdsn)

    def _check(self) -> None:
        if self._stopped is not None:
            raise Closed(self._stopped)

    def _next_itt(self) -> int:
        itt = self._itt
        while True:
            self._itt = (self._itt + 1) & 0x7FFFFFFF or 1
            if itt not in self._tasks:
                return itt
            itt = self._itt

    # ---------------------------------------------------------------- requests

    def submit(self, lun: int, cdb: bytes, *, data_out: Buffer | None = None,
               read_length: int = 0, read_into: bytearray | None = None,
               ) -> tuple[int, list[P.PDU]]:
        """Start a SCSI command: its ITT and the PDUs to send now (none while the command
        window is closed: they come out of ``data_to_send`` once it opens).

        Read data lands in ``read_into`` when it is exactly ``read_length`` bytes, else in
        a new buffer; ``data_out`` must stay unchanged until the command is done."""
        self._check()
        itt = self._next_itt()
        task = _Task(Kind.COMMAND, P.encode_lun(lun))
        if read_length:
            exact = read_into is not None and len(read_into) == read_length
            task.buffer = read_into if exact else bytearray(read_length)  # type: ignore[assignment]
        out = memoryview(data_out).cast("B") if data_out is not None else None
        task.data_out = out
        self._tasks[itt] = task

        def build(cmdsn: int) -> list[P.PDU]:
            return self._command_pdus(itt, task, cdb, out, read_length, cmdsn)

        if self.window_open():
            cmdsn = self.cmdsn
            self.cmdsn = sn_add(cmdsn, 1)
            return itt, build(cmdsn)
        self._held.append((itt, build))
        return itt, []

    def _command_pdus(self, itt: int, task: _Task, cdb: bytes, out: memoryview | None,
                      read_length: int, cmdsn: int) -> list[P.PDU]:
        immediate: Buffer = b""
        unsolicited = 0
        if out is not None and len(out):
            n, unsolicited = self.params.unsolicited_limit(len(out))
            immediate = out[:n]
        edtl = len(out) if out is not None else read_length
        pdus: list[P.PDU] = [P.SCSICommand(
            itt=itt, lun=task.lun, cdb=cdb, expected_length=edtl, cmdsn=cmdsn,
            expstatsn=self.expstatsn, read=bool(read_length), write=out is not None,
            final=unsolicited <= len(immediate), data=immediate)]
        if out is not None and unsolicited > len(immediate):
            self._data_out(pdus, itt, task.lun, out, len(immediate), unsolicited, RESERVED_TAG)
        return pdus

    def _data_out(self, pdus: list[P.PDU], itt: int, lun: int, data: memoryview, start: int,
                  end: int, ttt: int) -> None:
        for datasn, (off, n, last) in enumerate(
                segments(start, end, self.params.max_xmit_data_segment_length)):
            pdus.append(P.DataOut(itt=itt, lun=lun, ttt=ttt, datasn=datasn, offset=off,
                                  data=data[off : off + n], final=last,
                                  expstatsn=self.expstatsn))

    def _immediate(self, kind: Kind, make: Callable[[int], P.PDU]) -> tuple[int, list[P.PDU]]:
        self._check()
        itt = self._next_itt()
        self._tasks[itt] = _Task(kind)
        return itt, [make(itt)]

    def nop(self, data: bytes = b"") -> tuple[int, list[P.PDU]]:
        """A NOP-Out ping that the target answers with a NOP-In (``RequestDone``)."""
        return self._immediate(Kind.NOP, lambda itt: P.NopOut(
            itt=itt, cmdsn=self.cmdsn, expstatsn=self.expstatsn, data=data, immediate=True))

    def text(self, pairs: list[tuple[str, str]]) -> tuple[int, list[P.PDU]]:
        """A Text request; a long answer is continued until it is whole (``TextDone``)."""
        itt, pdus = self._immediate(Kind.TEXT, lambda itt: P.TextRequest(
            itt=itt, cmdsn=self.cmdsn, expstatsn=self.expstatsn, data=encode_text(pairs),
            immediate=True))
        self._tasks[itt].text = TextAssembler()
        return itt, pdus

    def logout(self, reason: int = LogoutReason.CLOSE_SESSION) -> tuple[int, list[P.PDU]]:
        return self._immediate(Kind.LOGOUT, lambda itt: P.LogoutRequest(
            itt=itt, reason=reason, cmdsn=self.cmdsn, expstatsn=self.expstatsn,
            immediate=True))

    def task_management(self, function: int, lun: int = 0,
                        referenced_itt: int = RESERVED_TAG) -> tuple[int, list[P.PDU]]:
        return self._immediate(Kind.TASK_MANAGEMENT, lambda itt: P.TaskManagementRequest(
            itt=itt, function=function, lun=P.encode_lun(lun), referenced_itt=referenced_itt,
            cmdsn=self.cmdsn, expstatsn=self.expstatsn, immediate=True))

    def abandon(self, itt: int) -> bool:
        """Forget a request nobody waits for any more (interrupted): its answer will be
        ignored and its buffers are never written again.  True if it was outstanding."""
        task = self._tasks.pop(itt, None)
        if task is None:
            return False
        for i, (held, _) in enumerate(self._held):
            if held == itt:  # never sent: it takes no CmdSN
                del self._held[i]
                break
        return True

    def close(self, reason: str) -> list[int]:
        """Stop (the connection is gone): the ITTs of every request left unanswered."""
        if self._stopped is None:
            self._stopped = reason
        itts = list(self._tasks)
        self._tasks.clear()
        self._held.clear()
        self._out.clear()
        self._ping = None
        return itts

    # ---------------------------------------------------------------- receiving

    def data_to_send(self) -> list[P.PDU]:
        """PDUs the machine produced since the last call, in the order to send them."""
        out, self._out = self._out, []
        return out

    def placement(self, bhs: Buffer) -> memoryview | None:
        """Where the data segment of a Data-In with header ``bhs`` goes: straight into its
        command's buffer at its offset, or None (the usual way; ``receive`` checks it)."""
        if bhs[0] & 0x3F != Opcode.DATA_IN:
            return None
        task = self._tasks.get(int.from_bytes(bhs[16:20], "big"))
        if task is None or task.buffer is None:
            return None
        offset = int.from_bytes(bhs[40:44], "big")
        end = offset + int.from_bytes(bhs[5:8], "big")
        if end > len(task.buffer):
            return None
        return memoryview(task.buffer)[offset:end]

    def receive(self, pdu: P.PDU, now: float) -> Event | None:
        """Take one PDU from the target: at most one event.  PDUs it calls for are
        queued for ``data_to_send``.  Raises ``ConnectionError_`` (and stops) when the
        target breaks the protocol."""
        self._check()
        self._last_heard = now
        handler = self._dispatch.get(type(pdu))
        if handler is None:
            return self._fail(f"unexpected {type(pdu).__name__} in the full-feature phase")
        return handler(pdu)

    def _fail(self, reason: str) -> Event:
        self.close(reason)
        raise ConnectionError_(reason)

    def _window(self, expcmdsn: int, maxcmdsn: int) -> None:
        # RFC 7143 §4.2.2.1: a MaxCmdSN below ExpCmdSN - 1 is ignored, with its ExpCmdSN
        if sn_lt(maxcmdsn, sn_add(expcmdsn, -1)):
            return
        if sn_lt(self.expcmdsn, expcmdsn):
            self.expcmdsn = expcmdsn
        if sn_lt(self.maxcmdsn, maxcmdsn):
            self.maxcmdsn = maxcmdsn
            while self._held and sn_le(self.cmdsn, self.maxcmdsn):
                _, build = self._held.popleft()
                cmdsn = self.cmdsn
                self.cmdsn = sn_add(cmdsn, 1)
                self._out.extend(build(cmdsn))

    def _status(self, statsn: int) -> None:
        self.expstatsn = sn_add(statsn, 1)

    def _data_in(self, pdu: P.DataIn) -> Event | None:
        self._window(pdu.expcmdsn, pdu.maxcmdsn)
        itt = pdu.itt
        task = self._tasks.get(itt)
        if pdu.has_status:
            self._status(pdu.statsn)
        if task is None:
            return None  # abandoned
        buffer = task.buffer
        if buffer is None:
            return self._fail(f"Data-In for a command that reads nothing (ITT {itt})")
        data = pdu.data
        end = pdu.offset + len(data)
        if end > len(buffer):
            return self._fail("Data-In beyond the expected length")
        if not (type(data) is memoryview and data.obj is buffer):  # not placed
            buffer[pdu.offset : end] = data
        if end > task.received:
            task.received = end
        if not pdu.has_status:
            return None
        del self._tasks[itt]
        return CommandDone(itt, Response(
            pdu.status, data=buffer, received=task.received, residual=pdu.residual_count,
            overflow=pdu.residual_overflow, underflow=pdu.residual_underflow))

    def _scsi_response(self, pdu: P.SCSIResponse) -> Event | None:
        self._window(pdu.expcmdsn, pdu.maxcmdsn)
        self._status(pdu.statsn)
        task = self._tasks.pop(pdu.itt, None)
        if task is None:
            return None
        return CommandDone(pdu.itt, Response(
            pdu.status, sense=pdu.sense,
            data=task.buffer if task.buffer is not None else bytearray(),
            received=task.received, residual=pdu.residual_count,
            overflow=pdu.residual_overflow, underflow=pdu.residual_underflow))

    def _r2t(self, pdu: P.R2T) -> Event | None:
        self._window(pdu.expcmdsn, pdu.maxcmdsn)
        task = self._tasks.get(pdu.itt)
        if task is None:
            return None
        data = task.data_out
        if data is None:
            return self._fail(f"R2T for a command that writes nothing (ITT {pdu.itt})")
        end = pdu.offset + pdu.length
        if end > len(data) or pdu.length > self.params.max_burst_length:
            return self._fail(f"R2T for bytes {pdu.offset}..{end} of a {len(data)}-byte write")
        self._data_out(self._out, pdu.itt, task.lun, data, pdu.offset, end, pdu.ttt)
        return None

    def _nop_in(self, pdu: P.NopIn) -> Event | None:
        self._window(pdu.expcmdsn, pdu.maxcmdsn)
        if pdu.itt == RESERVED_TAG:
            if pdu.ttt != RESERVED_TAG:  # the target pings us: answer at once
                self._out.append(P.NopOut(itt=RESERVED_TAG, ttt=pdu.ttt, lun=pdu.lun,
                                          cmdsn=self.cmdsn, expstatsn=self.expstatsn,
                                          immediate=True))
            return None
        self._status(pdu.statsn)
        if self._ping is not None and self._ping[0] == pdu.itt:
            self._ping = None
            self._tasks.pop(pdu.itt, None)
            return None
        return self._answered(pdu)

    def _answered(self, pdu: P.PDU) -> Event | None:
        statsn = getattr(pdu, "statsn", None)
        if statsn is not None and not isinstance(pdu, P.NopIn):
            self._status(statsn)
            self._window(pdu.expcmdsn, pdu.maxcmdsn)  # type: ignore[attr-defined]
        if self._tasks.pop(pdu.itt, None) is None:
            return None
        return RequestDone(pdu.itt, pdu)

    def _text_response(self, pdu: P.TextResponse) -> Event | None:
        self._window(pdu.expcmdsn, pdu.maxcmdsn)
        self._status(pdu.statsn)
        task = self._tasks.get(pdu.itt)
        if task is None or task.text is None:
            return None
        task.text.add(pdu.data)
        if pdu.final and not pdu.cont:
            del self._tasks[pdu.itt]
            return TextDone(pdu.itt, decode_text(task.text.take(), allow_duplicates=True))
        # more to come: ask for it with an empty request carrying the target's tag
        self._out.append(P.TextRequest(itt=pdu.itt, ttt=pdu.ttt, cmdsn=self.cmdsn,
                                       expstatsn=self.expstatsn, immediate=True))
        return None

    def _reject(self, pdu: P.Reject) -> Event | None:
        itt = pdu.rejected_itt
        if itt is None or self._tasks.pop(itt, None) is None:
            return None
        return Rejected(itt, pdu.reason)

    def _async(self, pdu: P.AsyncMessage) -> Event | None:
        self._window(pdu.expcmdsn, pdu.maxcmdsn)
        self._status(pdu.statsn)
        return AsyncEventReceived(pdu)

    # ---------------------------------------------------------------- time

    def get_timer(self) -> float | None:
        """When ``handle_timer`` wants to run next, or None (no pings configured)."""
        if self.nop_interval is None or self._stopped is not None:
            return None
        if self._ping is not None:
            return self._ping[1] + self.nop_timeout
        return self._last_heard + self.nop_interval

    def handle_timer(self, now: float) -> Event | None:
        """Send a NOP-Out ping after ``nop_interval`` of silence; report the target
        silent (``PeerSilent``) when a ping stays unanswered for ``nop_timeout``."""
        timer = self.get_timer()
        if timer is None or now < timer:
            return None
        if self._ping is not None:
            reason = f"no answer to NOP-Out within {self.nop_timeout:g}s"
            self.close(reason)
            return PeerSilent(reason)
        itt, pdus = self.nop()
        self._ping = (itt, now)
        self._out.extend(pdus)
        return None
