"""What a target tells about changes of its logical units, and what to read again.

A target reports a change with a unit attention (SPC-4 §5.14; SAM-5), on the next command
an I_T nexus sends to a logical unit: CAPACITY DATA HAS CHANGED means READ CAPACITY
answers differently now, REPORTED LUNS DATA HAS CHANGED that REPORT LUNS does.  This
module decides which sense data means what (``change_of``), collects the reports of many
commands into one piece of work (``AttentionTracker``), and decodes the answers of READ
CAPACITY and REPORT LUNS.  The initiator's shell sends the commands and applies the
results.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from blockbridge.iscsi.pdu import decode_lun

from .constants import CAPACITY_DATA_HAS_CHANGED, REPORTED_LUNS_DATA_HAS_CHANGED, SenseKey
from .sense import SenseData, parse_sense


class Change(enum.Flag):
    NONE = 0
    CAPACITY = enum.auto()  # READ CAPACITY of that LUN
    LUNS = enum.auto()  # REPORT LUNS of the target


def change_of(sense: SenseData | bytes | None) -> Change:
    """What a unit attention asks the initiator to read again; NONE for anything else
    (a reset, a mode page change by another initiator: nothing a size depends on)."""
    if isinstance(sense, bytes | bytearray):
        sense = parse_sense(bytes(sense))
    if sense is None or sense.key != SenseKey.UNIT_ATTENTION:
        return Change.NONE
    code = (sense.asc, sense.ascq)
    if code == CAPACITY_DATA_HAS_CHANGED:
        return Change.CAPACITY
    if code == REPORTED_LUNS_DATA_HAS_CHANGED:
        return Change.LUNS
    return Change.NONE


@dataclass(frozen=True)
class Rescan:
    """One piece of work: REPORT LUNS or not, and the LUNs whose capacity to read."""

    luns: bool = False
    capacity: frozenset[int] = frozenset()

    def __bool__(self) -> bool:
        return self.luns or bool(self.capacity)


@dataclass
class AttentionTracker:
    """Unit attentions seen since the last rescan, merged: a report that arrives while a
    rescan runs is kept for the next one, and many reports of one change are one rescan."""

    _luns: bool = False
    _capacity: set[int] = field(default_factory=set)

    def notice(self, lun: int, sense: SenseData | bytes | None) -> bool:
        """Record the unit attention a command to ``lun`` reported; True if it asks for
        something to be read again."""
        change = change_of(sense)
        if change & Change.CAPACITY:
            self._capacity.add(lun)
        if change & Change.LUNS:
            self._luns = True
        return change != Change.NONE

    def request(self, luns: bool, capacity: set[int]) -> None:
        """Ask for a rescan without an attention (the user's command, a new session)."""
        self._luns = self._luns or luns
        self._capacity |= capacity

    @property
    def pending(self) -> bool:
        return self._luns or bool(self._capacity)

    def take(self) -> Rescan:
        """The work collected so far; the tracker starts empty again."""
        work = Rescan(self._luns, frozenset(self._capacity))
        self._luns, self._capacity = False, set()
        return work


@dataclass(frozen=True)
class Capacity:
    blocks: int
    block_size: int
    thin: bool = False  # LBPME: logical block provisioning (UNMAP) enabled
    zeroes_after_unmap: bool = False  # LBPRZ

    @property
    def size(self) -> int:
        return self.blocks * self.block_size


def parse_read_capacity_16(data: bytes | bytearray | memoryview) -> Capacity:
    """The READ CAPACITY (16) parameter data (SBC-3 §5.16.2)."""
    d = bytes(data).ljust(32, b"\0")
    return Capacity(int.from_bytes(d[0:8], "big") + 1, int.from_bytes(d[8:12], "big") or 512,
                    bool(d[14] & 0x80), bool(d[14] & 0x40))


def parse_read_capacity_10(data: bytes | bytearray | memoryview) -> Capacity:
    """The READ CAPACITY (10) parameter data (SBC-3 §5.15.2), at most 2 TiB."""
    d = bytes(data).ljust(8, b"\0")
    return Capacity(int.from_bytes(d[0:4], "big") + 1, int.from_bytes(d[4:8], "big") or 512)


def parse_report_luns(data: bytes | bytearray | memoryview) -> list[int]:
    """The LUN numbers of REPORT LUNS parameter data (SPC-4 §6.33), as far as it came."""
    d = bytes(data)
    count = int.from_bytes(d[0:4], "big") // 8 if len(d) >= 4 else 0
    count = min(count, max(len(d) - 8, 0) // 8)
    return [decode_lun(int.from_bytes(d[8 + 8 * i : 16 + 8 * i], "big")) for i in range(count)]
