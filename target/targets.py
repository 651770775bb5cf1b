"""Runtime targets: a name, its logical units and its login policy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from blockbridge.iscsi.login import ChapCredentials

from .lun import LogicalUnit


@dataclass
class TargetDef:
    name: str
    luns: dict[int, LogicalUnit]
    alias: str | None = None
    incoming: dict[str, bytes] = field(default_factory=dict)
    outgoing: ChapCredentials | None = None
    operational: Mapping[str, str] = field(default_factory=dict)
    queued_commands: int = 32
    max_sessions: int = 0
    nop_interval: int = 0
    nop_timeout: int = 0
