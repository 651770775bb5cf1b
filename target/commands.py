"""What the target answers itself, without a logical unit: REPORT LUNS, INQUIRY of a LUN
that does not exist, and the answers for commands that never reach a unit (BUSY, an
initiator that stopped sending its data)."""

from __future__ import annotations

from blockbridge.iscsi import pdu as P
from blockbridge.scsi.constants import (
    INITIATOR_RESPONSE_TIMEOUT,
    INVALID_FIELD_IN_CDB,
    Op,
    SenseKey,
    Status,
)
from blockbridge.scsi.sense import build_sense

from .lun import LogicalUnit, SCSIResult, not_supported_lun_result, report_luns_data


def target_result(cmd: P.SCSICommand, luns: dict[int, LogicalUnit],
                  lun: int) -> SCSIResult | None:
    """The answer the target gives in place of a unit (REPORT LUNS; any command for a LUN
    that does not exist, INQUIRY with peripheral qualifier 3); None: the unit answers."""
    cdb = cmd.cdb
    op = cdb[0] if cdb else -1
    if op == Op.REPORT_LUNS:
        alloc = int.from_bytes(cdb[6:10], "big") if len(cdb) >= 10 else 0
        if alloc < 16:
            return SCSIResult(Status.CHECK_CONDITION, sense=build_sense(
                SenseKey.ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB))
        return SCSIResult(data=report_luns_data(list(luns))[:alloc])
    if lun in luns:
        return None
    if op == Op.INQUIRY:
        data = bytearray(36)
        data[0] = 0x7F  # peripheral qualifier 3: no LU here
        data[4] = 31
        alloc = int.from_bytes(cdb[3:5], "big") if len(cdb) >= 5 else 36
        return SCSIResult(data=bytes(data[:alloc]))
    return not_supported_lun_result()


def timed_out(lu: LogicalUnit | None) -> SCSIResult:
    """A write whose Data-Out stopped coming: ABORTED COMMAND, INITIATOR RESPONSE TIMEOUT."""
    return SCSIResult(Status.CHECK_CONDITION, sense=build_sense(
        SenseKey.ABORTED_COMMAND, INITIATOR_RESPONSE_TIMEOUT,
        descriptor=lu is not None and lu.mode.d_sense))
