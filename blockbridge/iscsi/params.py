"""Operational key negotiation (RFC 7143 §6.2 and §13), driven by a table of keys.

The same engine serves both roles: the side that receives an offer answers it with
:func:`respond`; the side that made an offer checks the answer with :func:`check_answer`.
The agreed values end up in a :class:`SessionParams`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from .errors import NegotiationError


class Rule(Enum):
    AND = "and"  # boolean, result is the AND of both
    OR = "or"  # boolean, result is the OR of both
    MIN = "min"  # numerical, result is the minimum
    MAX = "max"  # numerical, result is the maximum
    LIST = "list"  # first value of the offer that the answerer supports
    DECLARE = "declare"  # each side states its own value


class Phase(Enum):
    LEADING = "leading-only"  # only on the leading connection's login
    LOGIN = "login"  # any login
    ANY = "any"  # login or full-feature phase


@dataclass(frozen=True)
class Key:
    name: str
    rule: Rule
    default: str
    low: int = 0
    high: int = 0
    phase: Phase = Phase.LEADING
    values: tuple[str, ...] = ()  # LIST: the values we understand


KEYS: dict[str, Key] = {
    k.name: k
    for k in (
        Key("HeaderDigest", Rule.LIST, "None", phase=Phase.LOGIN, values=("CRC32C", "None")),
        Key("DataDigest", Rule.LIST, "None", phase=Phase.LOGIN, values=("CRC32C", "None")),
        Key("MaxConnections", Rule.MIN, "1", 1, 65535),
        Key("InitialR2T", Rule.OR, "Yes"),
        Key("ImmediateData", Rule.AND, "Yes"),
        Key("MaxRecvDataSegmentLength", Rule.DECLARE, "8192", 512, 16777215, Phase.ANY),
        Key("MaxBurstLength", Rule.MIN, "262144", 512, 16777215),
        Key("FirstBurstLength", Rule.MIN, "65536", 512, 16777215),
        Key("DefaultTime2Wait", Rule.MAX, "2", 0, 3600),
        Key("DefaultTime2Retain", Rule.MIN, "20", 0, 3600),
        Key("MaxOutstandingR2T", Rule.MIN, "1", 1, 65535),
        Key("DataPDUInOrder", Rule.OR, "Yes"),
        Key("DataSequenceInOrder", Rule.OR, "Yes"),
        Key("ErrorRecoveryLevel", Rule.MIN, "0", 0, 2),
        Key("OFMarker", Rule.AND, "No", phase=Phase.LOGIN),
        Key("IFMarker", Rule.AND, "No", phase=Phase.LOGIN),
    )
}
DECLARATIVE = frozenset(
    {"InitiatorName", "TargetName", "InitiatorAlias", "TargetAlias", "SessionType",
     "TargetPortalGroupTag", "TargetAddress", "SendTargets", "AuthMethod"}
)
OBSOLETE = frozenset({"OFMarkInt", "IFMarkInt"})

# What we offer/accept unless configured otherwise: what real initiators send (open-iscsi),
# except the two lengths a write of 1 MiB needs to go as one PDU (one command, received in
# place, one write on the target instead of four of each; see
# docs/dev/performance-notes.md).  A peer that offers less gets less: FirstBurstLength is
# the minimum of both offers, and each side sends segments no longer than the other declared.
OUR_DEFAULTS: dict[str, str] = {
    "HeaderDigest": "None",
    "DataDigest": "None",
    "MaxConnections": "1",
    "InitialR2T": "No",
    "ImmediateData": "Yes",
    "MaxRecvDataSegmentLength": "1048576",
    "MaxBurstLength": "16776192",
    "FirstBurstLength": "1048576",
    "DefaultTime2Wait": "2",
    "DefaultTime2Retain": "0",
    "MaxOutstandingR2T": "1",
    "DataPDUInOrder": "Yes",
    "DataSequenceInOrder": "Yes",
    "ErrorRecoveryLevel": "0",
}


def _bool(value: str, key: str) -> bool:
    if value == "Yes":
        return True
    if value == "No":
        return False
    raise NegotiationError(f"{key}={value}: expected Yes or No")


def _int(value: str, key: Key) -> int:
    if not value.isdigit() or len(value) > 10:
        raise NegotiationError(f"{key.name}={value}: not a number")
    n = int(value)
    if not key.low <= n <= key.high:
        raise NegotiationError(f"{key.name}={value}: outside {key.low}..{key.high}")
    return n


def respond(name: str, offered: str, ours: Mapping[str, str]) -> tuple[str, str | None]:
    """Answer one offered key.  Returns (answer text, agreed value or None if no agreement)."""
    if name in OBSOLETE:
        return "Irrelevant", None
    key = KEYS.get(name)
    if key is None:
        return "NotUnderstood", None
    mine = ours.get(name, OUR_DEFAULTS.get(name, key.default))
    try:
        if key.rule in (Rule.AND, Rule.OR):
            a, b = _bool(offered, name), _bool(mine, name)
            result = (a and b) if key.rule is Rule.AND else (a or b)
            text = "Yes" if result else "No"
            return text, text
        if key.rule in (Rule.MIN, Rule.MAX):
            x, y = _int(offered, key), _int(mine, key)
            text = str(min(x, y) if key.rule is Rule.MIN else max(x, y))
            return text, text
        if key.rule is Rule.LIST:
            wanted = [v.strip() for v in offered.split(",")]
            supported = [v.strip() for v in mine.split(",")]
            for v in wanted:
                if v in supported and v in key.values:
                    return v, v
            return "Reject", None
        _int(offered, key)  # DECLARE: validate only
        return mine, offered
    except NegotiationError:
        return "Reject", None


def check_answer(name: str, offered: str, answer: str) -> str:
    """Validate the peer's answer to our offer; return the agreed value."""
    key = KEYS.get(name)
    if key is None or answer in ("NotUnderstood", "Irrelevant", "Reject"):
        return key.default if key is not None else answer
    if key.rule is Rule.AND:
        if _bool(answer, name) and not _bool(offered, name):
            raise NegotiationError(f"{name}: peer answered Yes to our No")
    elif key.rule is Rule.OR:
        if not _bool(answer, name) and _bool(offered, name):
            raise NegotiationError(f"{name}: peer answered No to our Yes")
    elif key.rule is Rule.MIN:
        if _int(answer, key) > _int(offered, key):
            raise NegotiationError(f"{name}={answer}: larger than our offer {offered}")
    elif key.rule is Rule.MAX:
        if _int(answer, key) < _int(offered, key):
            raise NegotiationError(f"{name}={answer}: smaller than our offer {offered}")
    elif key.rule is Rule.LIST:
        if answer not in [v.strip() for v in offered.split(",")]:
            raise NegotiationError(f"{name}={answer}: not one of our offer {offered}")
    else:
        _int(answer, key)
    return answer


@dataclass(frozen=True)
class SessionParams:
    """Negotiated session and connection parameters, as seen from our side."""

    header_digest: bool = False
    data_digest: bool = False
    max_recv_data_segment_length: int = 8192
    max_xmit_data_segment_length: int = 8192
    max_burst_length: int = 262144
    first_burst_length: int = 65536
    initial_r2t: bool = True
    immediate_data: bool = True
    max_outstanding_r2t: int = 1
    max_connections: int = 1
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    error_recovery_level: int = 0
    default_time2wait: int = 2
    default_time2retain: int = 20
    session_type: str = "Normal"
    initiator_name: str = ""
    target_name: str = ""
    initiator_alias: str | None = None
    target_alias: str | None = None
    target_portal_group_tag: int | None = None

    def unsolicited_limit(self, length: int) -> tuple[int, int]:
        """How much of a ``length``-byte write goes without an R2T (RFC 7143 §13.11,
        §13.14): ``(immediate, unsolicited)``: the bytes in the command PDU itself, and
        the bytes sent before any R2T in all (immediate data plus unsolicited Data-Out)."""
        first = min(self.first_burst_length, length)
        immediate = min(first, self.max_xmit_data_segment_length) if self.immediate_data else 0
        unsolicited = first if not self.initial_r2t else immediate
        return immediate, unsolicited

    @classmethod
    def from_agreed(
        cls,
        agreed: Mapping[str, str],
        *,
        our_mrdsl: int,
        peer_mrdsl: int,
        **identity: object,
    ) -> SessionParams:
        def get(name: str) -> str:
            return agreed.get(name, KEYS[name].default)

        mbl = int(get("MaxBurstLength"))
        fbl = min(int(get("FirstBurstLength")), mbl)
        return cls(
            header_digest=get("HeaderDigest") == "CRC32C",
            data_digest=get("DataDigest") == "CRC32C",
            max_recv_data_segment_length=our_mrdsl,
            max_xmit_data_segment_length=peer_mrdsl,
            max_burst_length=mbl,
            first_burst_length=fbl,
            initial_r2t=get("InitialR2T") == "Yes",
            immediate_data=get("ImmediateData") == "Yes",
            max_outstanding_r2t=int(get("MaxOutstandingR2T")),
            max_connections=int(get("MaxConnections")),
            data_pdu_in_order=get("DataPDUInOrder") == "Yes",
            data_sequence_in_order=get("DataSequenceInOrder") == "Yes",
            error_recovery_level=int(get("ErrorRecoveryLevel")),
            default_time2wait=int(get("DefaultTime2Wait")),
            default_time2retain=int(get("DefaultTime2Retain")),
            **identity,  # type: ignore[arg-type]
        )
