"""Sessions and the session table: TSIH allocation, reinstatement."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from blockbridge.iscsi.params import SessionParams

if TYPE_CHECKING:
    from .connection import Connection
    from .lun import LogicalUnit, Nexus

@dataclass
class Session:
    tsih: int
    isid: bytes
    initiator_name: str
    target_name: str
    params: SessionParams
    nexus: Nexus | None
    luns: dict[int, LogicalUnit]
    expcmdsn: int  # the first CmdSN of the full-feature phase
    depth: int  # commands that may run at once (QueuedCommands)
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
