"""Sessions and the session table: TSIH allocation, reinstatement, the CmdSN window."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from blockbridge.iscsi.params import SessionParams
from blockbridge.iscsi.serial import sn_add, sn_le, sn_lt

if TYPE_CHECKING:
    from .connection import Connection
    from .lun import LogicalUnit, Nexus

@dataclass
class CommandWindow:
    """ExpCmdSN/MaxCmdSN bookkeeping for one session (RFC 7143 §4.2.2.1).

    At most ``depth`` commands run at once: MaxCmdSN leaves room for ``depth`` minus
    those in flight, and never goes back on what was offered (``advertised``); when
    they are all in flight the window is closed (MaxCmdSN = ExpCmdSN - 1).  A command
    beyond the last MaxCmdSN offered is dropped, so an initiator that ignores the window
    cannot make the target run more."""

    expcmdsn: int
    depth: int = 32
    in_flight: int = 0
    advertised: int = field(default=-1)  # the highest MaxCmdSN offered so far

    def __post_init__(self) -> None:
        if self.advertised < 0:
            self.advertised = sn_add(self.expcmdsn, self.depth - 1)

    @property
    def maxcmdsn(self) -> int:
        """MaxCmdSN to send now (asking counts as offering it)."""
        m = sn_add(self.expcmdsn, self.depth - self.in_flight - 1)
        if sn_lt(self.advertised, m):
            self.advertised = m
        return self.advertised

    def classify(self, cmdsn: int) -> str:
        """'now' if it is the next command, 'later' if inside the window, 'drop' otherwise."""
        if cmdsn == self.expcmdsn:
            return "now" if sn_le(cmdsn, self.maxcmdsn) else "drop"
        if sn_lt(self.expcmdsn, cmdsn) and sn_le(cmdsn, self.maxcmdsn):
            return "later"
        return "drop"

    def advance(self) -> None:
        self.expcmdsn = sn_add(self.expcmdsn, 1)


@dataclass
class Session:
    tsih: int
    isid: bytes
    initiator_name: str
    target_name: str
    params: SessionParams
    nexus: Nexus | None
    luns: dict[int, LogicalUnit]
    window: CommandWindow
    connections: set[Connection] = field(default_factory=set)
    discovery: bool = False
    # who logged in: part of the session's identity, with the initiator name and ISID
    chap_user: str | None = None


class SessionTable:
    def __init__(self) -> None:
        self._tsih = itertools.count(1)
        self.sessions: dict[int, Session] = {}

    def allocate_tsih(self) -> int:
        while True:
            tsih = next(self._tsih) & 0xFFFF
            if tsih and tsih not in self.sessions:
                return tsih

    def find(self, initiator_name: str, isid: bytes, target_name: str) -> Session | None:
        for s in self.sessions.values():
            if (s.initiator_name, s.isid, s.target_name) == (initiator_name, isid, target_name):
                return s
        return None

    def add(self, session: Session) -> None:
        self.sessions[session.tsih] = session

    def remove(self, session: Session) -> None:
        if self.sessions.get(session.tsih) is session:
            del self.sessions[session.tsih]
