"""SPC-4 commands of a disk LU: INQUIRY and VPD pages, sense, mode pages, reservations,
the supported operation codes; and their handler table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from blockbridge.iscsi.pdu import Buffer
from blockbridge.scsi import constants as c
from blockbridge.scsi.cdb import parse_inquiry, parse_report_luns
from blockbridge.scsi.constants import Op, SenseKey
from blockbridge.scsi.sense import CheckCondition, build_sense, invalid_field_in_cdb

from . import pages
from .command import Handler, Nexus, SCSIResult, allocation, report_luns_data

if TYPE_CHECKING:
    from .lun import LogicalUnit


async def test_unit_ready(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    return SCSIResult()


async def request_sense(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    if cdb[1] & 0x01:
        raise invalid_field_in_cdb(1)
    st = lu.gate.state(nexus)
    if st.unit_attentions:
        sense = build_sense(SenseKey.UNIT_ATTENTION, st.unit_attentions.pop(0),
                            descriptor=lu.mode.d_sense)
    else:
        sense = build_sense(SenseKey.NO_SENSE, c.NO_ADDITIONAL_SENSE,
                            descriptor=lu.mode.d_sense)
    return SCSIResult(data=sense[: cdb[4]])


async def inquiry(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    byte1, page, alloc = parse_inquiry(cdb)
    if byte1 & 0xFE:
        raise invalid_field_in_cdb(1)
    if page is None:
        if cdb[2]:
            raise invalid_field_in_cdb(2)
        return SCSIResult(data=pages.standard_inquiry(lu.read_only)[:alloc])
    out = pages.vpd_page(page, lu.identity, lu.geometry)
    if out is None:
        raise invalid_field_in_cdb(2)
    return SCSIResult(data=out[:alloc])


async def maintenance_in(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    if len(cdb) < 12 or cdb[1] & 0x1F != c.SA_REPORT_SUPPORTED_OPCODES:
        raise invalid_field_in_cdb(1)
    rctd, options = bool(cdb[2] & 0x80), cdb[2] & 0x07
    out = pages.report_supported_opcodes(
        options, cdb[3], int.from_bytes(cdb[4:6], "big"), rctd, commands(lu))
    if out is None:
        raise invalid_field_in_cdb(2)
    return SCSIResult(data=out[: int.from_bytes(cdb[6:10], "big")])


def commands(lu: LogicalUnit) -> list[tuple[int, int | None, int]]:
    """The entries of REPORT SUPPORTED OPERATION CODES this unit accepts."""
    extents = lu.backend.caps.can_extents
    return [(op, sa, n) for op, sa, n in pages.SUPPORTED_COMMANDS if op in lu.handlers
            and (extents or (op, sa) != (Op.SERVICE_ACTION_IN_16, c.SA_GET_LBA_STATUS))]


async def report_luns(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    # Normally answered by the target, which knows every LU; this covers direct use.
    return SCSIResult(data=report_luns_data([lu.number])[: parse_report_luns(cdb)])


async def mode_sense(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    six = cdb[0] == Op.MODE_SENSE_6
    dbd = bool(cdb[1] & 0x08)
    pc, page, subpage = cdb[2] >> 6, cdb[2] & 0x3F, cdb[3]
    alloc = cdb[4] if six else allocation(cdb, 7, 9)
    if pc == 3:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.SAVING_PARAMETERS_NOT_SUPPORTED,
                             field_pointer=2)
    if subpage not in (0, 0xFF) or (subpage == 0xFF and page != 0x3F):
        raise invalid_field_in_cdb(3)
    if page == 0x3F:
        body = b"".join(pages.mode_page(p, lu.mode, pc) or b"" for p in pages.ALL_MODE_PAGES)
    else:
        one = pages.mode_page(page, lu.mode, pc)
        if one is None:
            raise invalid_field_in_cdb(2)
        body = one
    bdesc = b""
    if not dbd:
        blocks = min(lu.blocks, 0xFFFFFF)
        bdesc = bytes([0]) + blocks.to_bytes(3, "big") + bytes([0]) + \
            lu.block_size.to_bytes(3, "big")
    dsp = 0x10 | (0x80 if (lu.read_only or lu.mode.swp) else 0)  # DPOFUA, WP
    if six:
        total = 4 + len(bdesc) + len(body)
        head = bytes([total - 1, 0, dsp, len(bdesc)])
    else:
        total = 8 + len(bdesc) + len(body)
        head = (total - 2).to_bytes(2, "big") + bytes([0, dsp, 0, 0]) + \
            len(bdesc).to_bytes(2, "big")
    return SCSIResult(data=(head + bdesc + body)[:alloc])


async def mode_select(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    six = cdb[0] == Op.MODE_SELECT_6
    if cdb[1] & 0x01:  # SP
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.SAVING_PARAMETERS_NOT_SUPPORTED,
                             field_pointer=1)
    params = bytes(data)
    if not params:
        return SCSIResult()
    hlen = 4 if six else 8
    if len(params) < hlen:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.PARAMETER_LIST_LENGTH_ERROR)
    bdl = params[3] if six else int.from_bytes(params[6:8], "big")
    pos = hlen + bdl
    new = pages.ModeState(lu.mode.write_cache, lu.mode.d_sense, lu.mode.swp)
    while pos + 2 <= len(params):
        page, plen = params[pos] & 0x3F, params[pos + 1]
        body = params[pos : pos + 2 + plen]
        if len(body) < 2 + plen:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.PARAMETER_LIST_LENGTH_ERROR)
        if page == 0x08 and plen >= 1:
            new.write_cache = bool(body[2] & 0x04)
        elif page == 0x0A and plen >= 3:
            new.d_sense = bool(body[2] & 0x04)
            new.swp = bool(body[4] & 0x08)
        elif pages.mode_page(page, lu.mode, 0) is None:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.INVALID_FIELD_IN_PARAMETER_LIST,
                                 field_pointer=pos, in_cdb=False)
        pos += 2 + plen
    changed = (new.write_cache, new.d_sense, new.swp) != (
        lu.mode.write_cache, lu.mode.d_sense, lu.mode.swp)
    lu.mode = new
    if changed:
        lu.gate.others(nexus, c.MODE_PARAMETERS_CHANGED)
    return SCSIResult()


async def reserve6(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    if cdb[1] & 0x01:  # third-party / extent: obsolete
        raise invalid_field_in_cdb(1)
    lu.gate.reservations.reserve6(nexus)
    return SCSIResult()


async def release6(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    lu.gate.reservations.release6(nexus)
    return SCSIResult()


async def prin(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    sa = cdb[1] & 0x1F
    alloc = allocation(cdb, 7, 9)
    r = lu.gate.reservations
    if sa == 0:
        out = r.read_keys()
    elif sa == 1:
        out = r.read_reservation()
    elif sa == 2:
        out = r.report_capabilities()
    elif sa == 3:
        out = r.read_full_status({n: n.transport_id() for n in r.keys
                                  if isinstance(n, Nexus)})
    else:
        raise invalid_field_in_cdb(1)
    return SCSIResult(data=out[:alloc])


async def prout(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    sa, pr_type = cdb[1] & 0x1F, cdb[2] & 0x0F
    scope = cdb[2] >> 4
    if sa > 6:
        raise invalid_field_in_cdb(1)
    if scope != 0 and sa in (1, 2, 4, 5):
        raise invalid_field_in_cdb(2)
    plen = int.from_bytes(cdb[5:9], "big")
    if plen != 24:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.PARAMETER_LIST_LENGTH_ERROR)
    preempted = lu.gate.reservations.prout(nexus, sa, pr_type, bytes(data[:24]))
    lu.gate.preempted(preempted)
    return SCSIResult()


HANDLERS: dict[int, Handler] = {
    Op.TEST_UNIT_READY: test_unit_ready, Op.REQUEST_SENSE: request_sense,
    Op.INQUIRY: inquiry, Op.MAINTENANCE_IN: maintenance_in, Op.REPORT_LUNS: report_luns,
    Op.MODE_SENSE_6: mode_sense, Op.MODE_SENSE_10: mode_sense,
    Op.MODE_SELECT_6: mode_select, Op.MODE_SELECT_10: mode_select,
    Op.RESERVE_6: reserve6, Op.RELEASE_6: release6,
    Op.PERSISTENT_RESERVE_IN: prin, Op.PERSISTENT_RESERVE_OUT: prout,
}
