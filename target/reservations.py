"""SPC-2 RESERVE/RELEASE and SPC-4 persistent reservations for one logical unit (pure state)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from blockbridge.scsi.constants import (
    INVALID_FIELD_IN_CDB,
    INVALID_FIELD_IN_PARAMETER_LIST,
    INVALID_RELEASE_OF_PERSISTENT_RESERVATION,
    PARAMETER_LIST_LENGTH_ERROR,
)
from blockbridge.scsi.sense import illegal_request

WE, EA, WERO, EARO, WEAR, EAAR = 1, 3, 5, 6, 7, 8
VALID_TYPES = (WE, EA, WERO, EARO, WEAR, EAAR)
ALL_REGISTRANTS = (WEAR, EAAR)


class Conflict(Exception):
    """RESERVATION CONFLICT status."""


Illegal = illegal_request  # CHECK CONDITION, ILLEGAL REQUEST with the given asc/ascq


@dataclass
class Reservations:
    generation: int = 0
    keys: dict[Hashable, int] = field(default_factory=dict)  # nexus -> registered key
    holder: Hashable | None = None  # nexus holding the PR (RO types)
    pr_type: int = 0
    spc2_holder: Hashable | None = None

    # ------------------------------------------------------------ access checks

    def check_access(self, nexus: Hashable, *, reads: bool, writes: bool) -> None:
        """Raise Conflict if a command with these effects may not run for ``nexus``."""
        if self.spc2_holder is not None and self.spc2_holder != nexus:
            raise Conflict()
        if not self.pr_type:
            return
        if self._is_holder(nexus):
            return
        registered = nexus in self.keys
        t = self.pr_type
        if t == WE:
            if writes:
                raise Conflict()
        elif t == EA:
            if writes or reads:
                raise Conflict()
        elif t in (WERO, WEAR):
            if writes and not registered:
                raise Conflict()
        elif t in (EARO, EAAR) and (writes or reads) and not registered:
            raise Conflict()

    def _is_holder(self, nexus: Hashable) -> bool:
        if not self.pr_type:
            return False
        if self.pr_type in ALL_REGISTRANTS:
            return nexus in self.keys
        return self.holder == nexus

    # ------------------------------------------------------------ SPC-2

    def reserve6(self, nexus: Hashable) -> None:
        if self.pr_type or (self.spc2_holder is not None and self.spc2_holder != nexus):
            raise Conflict()
        self.spc2_holder = nexus

    def release6(self, nexus: Hashable) -> None:
        if self.pr_type:
            raise Conflict()
        if self.spc2_holder == nexus:
            self.spc2_holder = None

    # ------------------------------------------------------------ nexus events

    def nexus_lost(self, nexus: Hashable) -> None:
        if self.spc2_holder == nexus:
            self.spc2_holder = None

    def reset(self) -> None:
        """LUN reset / target reset: SPC-2 reservations go, persistent ones stay."""
        self.spc2_holder = None

    # ------------------------------------------------------------ PR IN

    def read_keys(self) -> bytes:
        body = b"".join(k.to_bytes(8, "big") for k in self.keys.values())
        return self.generation.to_bytes(4, "big") + len(body).to_bytes(4, "big") + body

    def read_reservation(self) -> bytes:
        head = self.generation.to_bytes(4, "big")
        if not self.pr_type:
            return head + bytes(4)
        key = 0
        if self.pr_type not in ALL_REGISTRANTS and self.holder in self.keys:
            key = self.keys[self.holder]
        desc = key.to_bytes(8, "big") + bytes(4) + bytes([0, self.pr_type & 0xF, 0, 0])
        return head + len(desc).to_bytes(4, "big") + desc

    @staticmethod
    def report_capabilities() -> bytes:
        # length 8; ATP_C=0, SIP_C=0, PTPL_C=0; TMV=1 with the types we support.
        types = 0x80 | 0x40 | 0x20 | 0x08 | 0x02  # WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
        return bytes([0, 8, 0x00, 0x80, types, 0x01, 0, 0])

    def read_full_status(self, describe: dict[Hashable, bytes]) -> bytes:
        descs = b""
        for nexus, key in self.keys.items():
            holder = self._is_holder(nexus)
            tid = describe.get(nexus, b"")
            d = bytearray(24)
            d[0:8] = key.to_bytes(8, "big")
            d[12] = 0x01 if holder else 0x00
            d[13] = self.pr_type & 0xF if holder else 0
            d[20:24] = len(tid).to_bytes(4, "big")
            descs += bytes(d) + tid
        return self.generation.to_bytes(4, "big") + len(descs).to_bytes(4, "big") + descs

    # ------------------------------------------------------------ PR OUT

    def prout(self, nexus: Hashable, action: int, pr_type: int, params: bytes) -> set[Hashable]:
        """Run one PERSISTENT RESERVE OUT; returns the nexuses whose registration was preempted."""
        if len(params) < 24:
            raise Illegal(PARAMETER_LIST_LENGTH_ERROR)
        key = int.from_bytes(params[0:8], "big")
        sa_key = int.from_bytes(params[8:16], "big")
        flags = params[20]
        if flags & 0x0C:  # SPEC_I_PT, ALL_TG_PT
            raise Illegal(INVALID_FIELD_IN_PARAMETER_LIST, in_cdb=False)
        mine = self.keys.get(nexus)
        if action == 0 or action == 6:  # REGISTER / REGISTER AND IGNORE EXISTING KEY
            if action == 0 and (mine if mine is not None else 0) != key:
                raise Conflict()
            if sa_key == 0:
                if mine is not None:
                    self._unregister(nexus)
            else:
                self.keys[nexus] = sa_key
            self.generation += 1
            return set()
        if mine is None or mine != key:
            raise Conflict()
        if action == 1:  # RESERVE
            if pr_type not in VALID_TYPES:
                raise Illegal(INVALID_FIELD_IN_CDB)
            if self.pr_type:
                if self._is_holder(nexus) and self.pr_type == pr_type:
                    return set()
                raise Conflict()
            if self.spc2_holder is not None and self.spc2_holder != nexus:
                raise Conflict()
            self.pr_type, self.holder = pr_type, nexus
            return set()
        if action == 2:  # RELEASE
            if not self.pr_type or not self._is_holder(nexus):
                return set()
            if self.pr_type != pr_type:
                raise Illegal(INVALID_RELEASE_OF_PERSISTENT_RESERVATION)
            self.pr_type, self.holder = 0, None
            return set()
        if action == 3:  # CLEAR
            others = set(self.keys) - {nexus}
            self.keys.clear()
            self.pr_type, self.holder = 0, None
            self.generation += 1
            return others
        if action in (4, 5):  # PREEMPT (AND ABORT)
            return self._preempt(nexus, pr_type, sa_key)
        raise Illegal(INVALID_FIELD_IN_CDB)

    def _unregister(self, nexus: Hashable) -> None:
        del self.keys[nexus]
        if self.pr_type in ALL_REGISTRANTS:
            if not self.keys:
                self.pr_type, self.holder = 0, None
        elif self.holder == nexus:
            self.pr_type, self.holder = 0, None

    def _preempt(self, nexus: Hashable, pr_type: int, sa_key: int) -> set[Hashable]:
        victims: set[Hashable]
        if self.pr_type in ALL_REGISTRANTS and sa_key == 0:
            victims = set(self.keys) - {nexus}
            for v in victims:
                del self.keys[v]
            if pr_type not in VALID_TYPES:
                raise Illegal(INVALID_FIELD_IN_CDB)
            self.pr_type, self.holder = pr_type, nexus
            self.generation += 1
            return victims
        if sa_key == 0:
            raise Illegal(INVALID_FIELD_IN_PARAMETER_LIST, in_cdb=False)
        victims = {n for n, k in self.keys.items() if k == sa_key}
        holder_key = self.keys.get(self.holder) if self.holder is not None else None
        preempting_holder = bool(self.pr_type) and self.pr_type not in ALL_REGISTRANTS \
            and holder_key == sa_key
        if not victims and not preempting_holder:
            raise Conflict()
        for v in victims:
            if v != nexus:
                del self.keys[v]
        if preempting_holder:
            if pr_type not in VALID_TYPES:
                raise Illegal(INVALID_FIELD_IN_CDB)
            self.pr_type, self.holder = pr_type, nexus
        self.generation += 1
        return victims - {nexus}
