"""What the target's full-feature machine (:mod:`.target_connection`) tells its shell.

Plain (not frozen) dataclasses: one is made per command on the hot path."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .constants import TaskResponse
from .framing import WithFileData
from .pdu import PDU, Buffer, SCSICommand

Outgoing = PDU | WithFileData


class State(enum.Enum):
    FULL_FEATURE = "full feature phase"
    LOGGED_OUT = "logged out"  # the Logout Response was made: nothing more comes in
    FAILED = "failed"  # a protocol error stopped it


class Phase(enum.Enum):
    """Where a command's Data-Out stands."""

    NONE = "no data to receive"
    UNSOLICITED = "receiving unsolicited data"  # more may come unasked (InitialR2T=No)
    WAITING = "waiting to solicit"  # unsolicited data over; no R2T until the shell asks
    BURST = "receiving a solicited burst"  # an R2T is out
    COMPLETE = "all data received"
    ABORTED = "aborted"  # its Data-Out is ignored; the shell ends it


@dataclass(slots=True)
class Event:
    pass


@dataclass(slots=True)
class CommandReceived(Event):
    """A command whose turn has come (in CmdSN order, or immediate).  ``data`` is what
    came with it (in a buffer for all of it if it was placed).  ``complete``: no more data
    will come.  ``unasked``: data came or will come without an R2T, so its buffer budget
    must be taken at once (or the command refused)."""

    itt: int
    cmd: SCSICommand
    lun: int
    data: Buffer
    complete: bool
    unasked: bool


@dataclass(slots=True)
class DataReceived(Event):
    """All of a write's data is in ``data`` (the command's buffer): it may run."""

    itt: int
    data: memoryview


@dataclass(slots=True)
class DataTimedOut(Event):
    """No Data-Out came for a command that waits for it within the Data-Out timeout."""

    itt: int
    received: int
    expected: int


@dataclass(slots=True)
class Send(Event):
    """PDUs to send as they are (R2Ts, NOP-In, Text continuations, Rejects, refusals)."""

    pdus: tuple[Outgoing, ...]


@dataclass(slots=True)
class CommandDropped(Event):
    """A command outside the window was ignored."""

    cmdsn: int
    expcmdsn: int
    maxcmdsn: int


@dataclass(slots=True)
class TaskManagement(Event):
    """A task management request: ``abort`` are the tasks to end without an answer (the
    machine ignores their Data-Out already); ``response`` what the machine would answer.
    The shell resets units as asked and answers with ``tmf_response``."""

    itt: int
    function: int  # a TaskFunction, or a number the machine does not support
    lun: int
    abort: tuple[int, ...]
    response: TaskResponse


@dataclass(slots=True)
class TextRequested(Event):
    """A complete text request (Continue-bit parts reassembled): answer with ``text_answer``."""

    itt: int
    pairs: tuple[tuple[str, str], ...]


@dataclass(slots=True)
class LogoutRequested(Event):
    """Answer with ``logout_response`` once the running commands are done."""

    itt: int
    reason: int


@dataclass(slots=True)
class PeerSilent(Event):
    """A NOP-In ping went unanswered for the NOP timeout: the connection is dead."""

    timeout: float
