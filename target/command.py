"""What passes between the connection and a logical unit: the nexus a command comes from,
its result, the ways a command finishes (at once, in flight, pending), and the groups of
operation codes the unit's modules share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from blockbridge.iscsi.framing import FileRange
from blockbridge.iscsi.pdu import Buffer, encode_lun
from blockbridge.scsi import constants as c
from blockbridge.scsi.constants import Op, SenseKey, Status
from blockbridge.scsi.sense import CheckCondition

if TYPE_CHECKING:
    from .lun import LogicalUnit


@dataclass(frozen=True)
class Nexus:
    """An I_T nexus: initiator port (name + ISID) and target port."""

    initiator_name: str
    isid: bytes
    target_name: str
    tpgt: int = 1

    @property
    def initiator_port(self) -> str:
        return f"{self.initiator_name},i,0x{self.isid.hex()}"

    def transport_id(self) -> bytes:
        name = self.initiator_port.encode() + b"\0"
        name += b"\0" * (-len(name) % 4)
        return bytes([0x45, 0]) + len(name).to_bytes(2, "big") + name


@dataclass
class SCSIResult:
    status: int = Status.GOOD
    data: Buffer | FileRange = b""  # a FileRange only from submit(files=True)
    sense: bytes = b""
    # called once ``data`` has been sent, to recycle its buffer (not after a failed send)
    release: Callable[[], None] | None = None


class Pending:
    """A command that needs a task: await it (once) for its result."""

    __slots__ = ("_run",)

    def __init__(self, run: Callable[[], Awaitable[SCSIResult]]) -> None:
        self._run = run  # nothing starts until awaited: an unawaited Pending costs nothing

    def __await__(self) -> Generator[Any, None, SCSIResult]:
        return self._run().__await__()


class InFlight:
    """The type of :data:`IN_FLIGHT`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "IN_FLIGHT"


IN_FLIGHT = InFlight()  # started without a task: its ``done`` callback gets the result

# A command handler: (unit, CDB, Data-Out, nexus) -> result; raises CheckCondition.
Handler = Callable[["LogicalUnit", bytes, Buffer, Nexus], Awaitable[SCSIResult]]


def not_supported_lun_result() -> SCSIResult:
    """The answer for a command addressed to a LUN that does not exist."""
    cc = CheckCondition(SenseKey.ILLEGAL_REQUEST, c.LOGICAL_UNIT_NOT_SUPPORTED)
    return SCSIResult(Status.CHECK_CONDITION, sense=cc.sense())


def allocation(cdb: bytes, start: int, end: int) -> int:
    """The allocation length in ``cdb[start:end]`` (0 past the end of a short CDB)."""
    return int.from_bytes(cdb[start:end], "big")


def report_luns_data(luns: list[int]) -> bytes:
    body = b"".join(encode_lun(n).to_bytes(8, "big") for n in sorted(luns))
    return len(body).to_bytes(4, "big") + bytes(4) + body


READS = frozenset({Op.READ_6, Op.READ_10, Op.READ_12, Op.READ_16})
WRITES = frozenset({Op.WRITE_6, Op.WRITE_10, Op.WRITE_12, Op.WRITE_16})
READS_WRITES = READS | WRITES
WRITE_VERIFY = frozenset({Op.WRITE_VERIFY_10, Op.WRITE_VERIFY_12, Op.WRITE_VERIFY_16})
VERIFY = frozenset({Op.VERIFY_10, Op.VERIFY_12, Op.VERIFY_16})
MEDIUM_WRITES = WRITES | WRITE_VERIFY | {
    Op.WRITE_SAME_10, Op.WRITE_SAME_16, Op.UNMAP, Op.COMPARE_AND_WRITE, Op.ORWRITE_16}
# Commands whose transfer length the Block Limits page's MAXIMUM TRANSFER LENGTH bounds.
TRANSFER_OPS = READS_WRITES | VERIFY | WRITE_VERIFY | {Op.ORWRITE_16}
# Reads and write-back writes up to this size are first tried at once on the event loop
# (page cache, inline backends); larger ones take a task.
INLINE_IO = 1 << 20
