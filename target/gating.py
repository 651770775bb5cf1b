"""Whether a command may run for an I_T nexus now: unit attentions and reservations, in one
place.  A logical unit asks ``admit`` before every command; the fast path asks ``quiet``
(nothing to report, nothing reserved) before it skips ``admit``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from blockbridge.scsi import constants as c
from blockbridge.scsi.constants import Op, SenseKey
from blockbridge.scsi.sense import CheckCondition

from .command import MEDIUM_WRITES, Nexus
from .reservations import Reservations

# Commands a reservation never blocks.
ALWAYS = frozenset({Op.INQUIRY, Op.REPORT_LUNS, Op.REQUEST_SENSE, Op.PERSISTENT_RESERVE_IN,
                    Op.PERSISTENT_RESERVE_OUT, Op.READ_CAPACITY_10, Op.SERVICE_ACTION_IN_16,
                    Op.MAINTENANCE_IN, Op.TEST_UNIT_READY, Op.RELEASE_6, Op.RESERVE_6})
# Commands that UNIT ATTENTION does not interrupt.
NO_UA = frozenset({Op.INQUIRY, Op.REPORT_LUNS, Op.REQUEST_SENSE})
# Commands a write-exclusive reservation blocks, besides the medium writes.
_CHANGES = MEDIUM_WRITES | {Op.MODE_SELECT_6, Op.MODE_SELECT_10, Op.SYNCHRONIZE_CACHE_10,
                            Op.SYNCHRONIZE_CACHE_16, Op.START_STOP_UNIT}
MAX_UNIT_ATTENTIONS = 8


@dataclass
class NexusState:
    unit_attentions: list[tuple[int, int]] = field(default_factory=list)
    prevent: bool = False


class Gate:
    def __init__(self) -> None:
        self.reservations = Reservations()
        self.nexuses: dict[Nexus, NexusState] = {}

    def state(self, nexus: Nexus) -> NexusState:
        st = self.nexuses.get(nexus)
        if st is None:
            st = self.nexuses[nexus] = NexusState()
        return st

    def quiet(self, nexus: Nexus) -> bool:
        """No unit attention pending for ``nexus`` and no reservation held by anyone:
        ``admit`` would let any command through."""
        st = self.nexuses.get(nexus)
        res = self.reservations
        return (st is None or not st.unit_attentions) and res.spc2_holder is None \
            and not res.pr_type

    def admit(self, op: int, nexus: Nexus) -> None:
        """Raise CheckCondition for a pending unit attention (reported once), or
        reservations.Conflict if a reservation blocks ``op`` for ``nexus``."""
        st = self.state(nexus)
        if st.unit_attentions and op not in NO_UA:
            raise CheckCondition(SenseKey.UNIT_ATTENTION, st.unit_attentions.pop(0))
        if op not in ALWAYS:
            writes = op in _CHANGES
            self.reservations.check_access(nexus, reads=not writes, writes=writes)

    @staticmethod
    def _add(st: NexusState, ua: tuple[int, int]) -> None:
        if ua not in st.unit_attentions and len(st.unit_attentions) < MAX_UNIT_ATTENTIONS:
            st.unit_attentions.append(ua)

    def unit_attention(self, ua: tuple[int, int], nexuses: Iterable[Nexus]) -> None:
        """Establish ``ua`` (asc, ascq) for each nexus, including ones that never
        addressed this unit yet: their next command to it reports it."""
        for nexus in nexuses:
            self._add(self.state(nexus), ua)

    def others(self, nexus: Nexus, ua: tuple[int, int]) -> None:
        """Establish ``ua`` for every known nexus but ``nexus`` (its change is theirs to
        learn: mode parameters, a reset)."""
        for other, st in self.nexuses.items():
            if other != nexus:
                self._add(st, ua)

    def preempted(self, victims: Iterable[object]) -> None:
        """REGISTRATIONS PREEMPTED for the nexuses a PERSISTENT RESERVE OUT removed."""
        for victim in victims:
            st = self.nexuses.get(victim)  # type: ignore[call-overload]
            if st is not None:
                self._add(st, c.REGISTRATIONS_PREEMPTED)

    def nexus_lost(self, nexus: Nexus) -> None:
        self.nexuses.pop(nexus, None)
        self.reservations.nexus_lost(nexus)

    def reset(self, by: Nexus | None) -> None:
        """LOGICAL UNIT RESET: reservations and PREVENT go; the others learn of it."""
        self.reservations.reset()
        for nexus, st in self.nexuses.items():
            st.prevent = False
            if nexus != by:
                self._add(st, c.BUS_DEVICE_RESET)
