"""The target's CmdSN window (RFC 7143 §4.2.2.1): ExpCmdSN, MaxCmdSN and admission."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .serial import sn_add, sn_le, sn_lt


class Admission(enum.Enum):
    """What to do with a command by its CmdSN."""

    NOW = "now"  # the next command: run it
    LATER = "later"  # inside the window, ahead of its turn: hold it
    DROP = "drop"  # outside the window: ignore it


@dataclass
class CommandWindow:
    """ExpCmdSN/MaxCmdSN bookkeeping for one session.

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

    @property
    def full(self) -> bool:
        """Every place is taken: even an immediate command finds no room."""
        return self.in_flight >= self.depth

    def classify(self, cmdsn: int) -> Admission:
        if cmdsn == self.expcmdsn:
            if self.in_flight < self.depth:  # room now: MaxCmdSN is at least ExpCmdSN
                return Admission.NOW
            return Admission.NOW if sn_le(cmdsn, self.maxcmdsn) else Admission.DROP
        if sn_lt(self.expcmdsn, cmdsn) and sn_le(cmdsn, self.maxcmdsn):
            return Admission.LATER
        return Admission.DROP

    def advance(self) -> None:
        self.expcmdsn = sn_add(self.expcmdsn, 1)


def login_numbers(statsn: int, expcmdsn: int, depth: int) -> tuple[int, int]:
    """For a Login Response numbered ``statsn``: the MaxCmdSN it offers (a window of
    ``depth`` from ``expcmdsn``) and the StatSN of the next response."""
    return sn_add(expcmdsn, depth - 1), sn_add(statsn, 1)
