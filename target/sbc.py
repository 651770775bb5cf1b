"""SBC-3 commands of a disk LU: block reads and writes, verification, provisioning
(UNMAP, WRITE SAME, GET LBA STATUS), cache control, capacity; and their handler table.

Each handler takes the unit, the CDB, the Data-Out and the nexus; gating (unit attentions,
reservations, the write gate) is done before it is called (see lun.py).  Block data moves
through the unit's I/O engine (``lu.io``).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from blockbridge.iscsi.pdu import Buffer
from blockbridge.scsi import constants as c
from blockbridge.scsi.cdb import (
    lba_status,
    length_field,
    parse_compare_and_write,
    parse_get_lba_status,
    parse_lba_cdb,
    parse_unmap,
    parse_unmap_parameters,
)
from blockbridge.scsi.constants import Op, SenseKey
from blockbridge.scsi.sense import CheckCondition, invalid_field_in_cdb

from . import pages
from .command import INLINE_IO, READS, Handler, Nexus, SCSIResult, allocation

if TYPE_CHECKING:
    from .lun import LogicalUnit

async def read(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    lba, n, flags = parse_lba_cdb(cdb)
    if flags & 0xE0:
        raise invalid_field_in_cdb(1)
    lu.check_range(lba, n)
    if n == 0:
        return SCSIResult()
    bs = lu.block_size
    length = n * bs
    if length > INLINE_IO:  # rare sizes: a fresh buffer, not kept afterwards
        buf = bytearray(length)
        await lu.io.read(lba * bs, buf)
        release = None
    else:
        buf = lu.io.pool.take(length)
        if not lu.io.read_at_once(lba * bs, buf):
            await lu.io.read(lba * bs, buf)
        release = partial(lu.io.pool.give, buf)
    return SCSIResult(data=buf, release=release)


async def write(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    lba, n, flags = parse_lba_cdb(cdb)
    if flags & 0xE0:
        raise invalid_field_in_cdb(1)
    fua = bool(flags & 0x08) and cdb[0] != Op.WRITE_6
    return await write_blocks(lu, lba, n, data, sync=fua or not lu.mode.write_cache)


async def write_blocks(lu: LogicalUnit, lba: int, n: int, data: Buffer, *,
                       sync: bool) -> SCSIResult:
    """Write the blocks that both the CDB (``n``) and the data received cover."""
    lu.check_writable()
    lu.check_range(lba, n)
    bs = lu.block_size
    blocks = min(n, len(data) // bs)
    if blocks:
        piece = memoryview(data)[: blocks * bs]
        inline = not sync and blocks * bs <= INLINE_IO
        if not (inline and lu.io.write_at_once(lba * bs, piece)):
            await lu.io.write(lba * bs, piece, sync)
    return SCSIResult()


async def verify(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    lba, n, flags = parse_lba_cdb(cdb)
    if flags & 0xE0:
        raise invalid_field_in_cdb(1)
    bytchk = (flags >> 1) & 3
    if bytchk == 2:
        raise invalid_field_in_cdb(1)
    lu.check_range(lba, n)
    if bytchk == 0 or n == 0:
        return SCSIResult()
    bs = lu.block_size
    medium = await lu.io.read_new(lba * bs, n * bs)
    expected = bytes(data) if bytchk == 1 else bytes(data[:bs]) * n
    if len(expected) < len(medium):
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.PARAMETER_LIST_LENGTH_ERROR)
    compare(medium, expected)
    return SCSIResult()


def compare(medium: bytes | bytearray, expected: bytes) -> None:
    if medium != expected[: len(medium)]:
        pairs = enumerate(zip(medium, expected, strict=False))
        offset = next(i for i, (a, b) in pairs if a != b)
        raise CheckCondition(SenseKey.MISCOMPARE, c.MISCOMPARE_DURING_VERIFY,
                             information=offset)


async def write_verify(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    lba, n, flags = parse_lba_cdb(cdb)
    if flags & 0xE0 or (flags >> 1) & 3 in (2, 3):
        raise invalid_field_in_cdb(1)
    # the medium is the backing store: verifying means writing through to it
    return await write_blocks(lu, lba, n, data, sync=True)


async def orwrite(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    lba, n, flags = parse_lba_cdb(cdb)
    if flags & 0xE0:
        raise invalid_field_in_cdb(1)
    lu.check_writable()
    lu.check_range(lba, n)
    bs = lu.block_size
    if n == 0:
        return SCSIResult()
    # no other write runs meanwhile: _execute holds the write gate exclusive
    old = await lu.io.read_new(lba * bs, n * bs)
    mask = bytes(data[: n * bs]).ljust(n * bs, b"\0")
    new = (int.from_bytes(old, "big") | int.from_bytes(mask, "big")).to_bytes(n * bs, "big")
    await lu.io.write(lba * bs, new, not lu.mode.write_cache)
    return SCSIResult()


async def compare_and_write(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    lba, n, flags = parse_compare_and_write(cdb)
    if flags & 0xE0:
        raise invalid_field_in_cdb(1)
    lu.check_writable()
    if n > lu.geometry.max_compare_and_write:
        raise invalid_field_in_cdb(13)
    lu.check_range(lba, n)
    if n == 0:
        if len(data):
            raise invalid_field_in_cdb(13)
        return SCSIResult()
    bs = lu.block_size
    if len(data) < 2 * n * bs:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.INVALID_FIELD_IN_INFORMATION_UNIT)
    verify, new = bytes(data[: n * bs]), memoryview(data)[n * bs : 2 * n * bs]
    # no other write runs meanwhile: _execute holds the write gate exclusive
    medium = await lu.io.read_new(lba * bs, n * bs)
    compare(medium, verify)
    sync = bool(flags & 0x08) or not lu.mode.write_cache
    await lu.io.write(lba * bs, new, sync)
    return SCSIResult()


async def write_same(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    op = cdb[0]
    lba, n, flags = parse_lba_cdb(cdb)
    if flags & 0xE0:
        raise invalid_field_in_cdb(1)
    if flags & 0x10:  # ANCHOR
        raise invalid_field_in_cdb(1)
    unmap, ndob = bool(flags & 0x08), op == Op.WRITE_SAME_16 and bool(flags & 0x01)
    lu.check_writable()
    if n == 0:
        n = lu.blocks - lba if lba < lu.blocks else 0
        if lba >= lu.blocks:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.LBA_OUT_OF_RANGE)
    lu.check_range(lba, n)
    if n > lu.geometry.max_write_same_blocks:
        raise invalid_field_in_cdb(length_field(op))
    bs = lu.block_size
    if ndob:
        block = bytes(bs)
    else:
        if len(data) < bs:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.INVALID_FIELD_IN_CDB)
        block = bytes(data[:bs])
    zeros = not any(block)
    caps = lu.io.caps
    if unmap and lu.geometry.can_unmap:
        # UNMAP=1: deallocate, whatever the block holds (libiscsi's tests expect that);
        # with LBPRZ the blocks then read back as zeros.
        await lu.io.trim(lba * bs, n * bs)
    elif zeros and caps.can_zero:
        await lu.io.zero(lba * bs, n * bs, False)
    else:
        await fill(lu, lba * bs, n, block)
    if not lu.mode.write_cache:
        await lu.io.flush()
    return SCSIResult()


async def fill(lu: LogicalUnit, offset: int, n: int, block: bytes) -> None:
    chunk_blocks = max(1, (1 << 20) // len(block))
    chunk = bytearray(block * chunk_blocks)
    done = 0
    while done < n:
        k = min(chunk_blocks, n - done)
        piece = chunk if k == chunk_blocks else memoryview(chunk)[: k * len(block)]
        await lu.io.write(offset + done * len(block), piece)
        done += k


async def unmap(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    anchor, plen = parse_unmap(cdb)
    if anchor:
        raise invalid_field_in_cdb(1)
    lu.check_writable()
    if plen == 0:
        return SCSIResult()
    descriptors = parse_unmap_parameters(bytes(data[:plen]))
    if len(descriptors) > lu.geometry.max_unmap_descriptors:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.INVALID_FIELD_IN_PARAMETER_LIST,
                             in_cdb=False)
    ranges = []
    for lba, n in descriptors:
        lu.check_range(lba, n)
        if n > lu.geometry.max_unmap_blocks:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST,
                                 c.INVALID_FIELD_IN_PARAMETER_LIST, in_cdb=False)
        if n:
            ranges.append((lba, n))
    bs = lu.block_size
    if not lu.geometry.can_unmap:
        return SCSIResult()
    for lba, n in ranges:
        await lu.io.trim(lba * bs, n * bs)
    return SCSIResult()


async def sync_cache(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    lba, n, _flags = parse_lba_cdb(cdb)
    lu.check_range(lba, n)
    await lu.io.flush()
    return SCSIResult()


async def prefetch(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    lba, n, _flags = parse_lba_cdb(cdb)
    lu.check_range(lba, n)
    bs = lu.block_size
    await lu.io.cache(lba * bs, (n or lu.blocks - lba) * bs)
    return SCSIResult()


async def get_lba_status(lu: LogicalUnit, cdb: bytes) -> SCSIResult:
    lba, alloc = parse_get_lba_status(cdb)
    if lba >= lu.blocks:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.LBA_OUT_OF_RANGE)
    bs = lu.block_size
    mapped, length = await lu.io.extents(lba * bs)
    n = max(1, min(length // bs, lu.blocks - lba, 0xFFFFFFFF))
    return SCSIResult(data=lba_status([(lba, n, 0 if mapped else 1)])[:alloc])


async def read_capacity_10(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    return SCSIResult(data=pages.read_capacity_10(lu.geometry))


async def service_action_in(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    if len(cdb) < 16:
        raise invalid_field_in_cdb()
    sa = cdb[1] & 0x1F
    if sa == c.SA_READ_CAPACITY_16:
        alloc = int.from_bytes(cdb[10:14], "big")
        return SCSIResult(data=pages.read_capacity_16(lu.geometry)[:alloc])
    if sa == c.SA_GET_LBA_STATUS:
        if not lu.backend.caps.can_extents:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.INVALID_COMMAND_OPERATION_CODE,
                                 field_pointer=1)
        lu.gate.reservations.check_access(nexus, reads=True, writes=False)
        return await get_lba_status(lu, cdb)
    raise invalid_field_in_cdb(1)


async def read_defect_data(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    fmt = cdb[2] & 0x1F if cdb[0] == Op.READ_DEFECT_DATA_10 else cdb[1] & 0x1F
    if cdb[0] == Op.READ_DEFECT_DATA_10:
        return SCSIResult(data=bytes([0, fmt, 0, 0])[: allocation(cdb, 7, 9)])
    return SCSIResult(data=bytes([0, fmt, 0, 0, 0, 0, 0, 0])[: allocation(cdb, 6, 10)])


async def start_stop(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    return SCSIResult()


async def prevent_allow(lu: LogicalUnit, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
    lu.gate.state(nexus).prevent = bool(cdb[4] & 0x03)
    return SCSIResult()


HANDLERS: dict[int, Handler] = {}
for _ops, _fn in (
    (READS, read), ({Op.WRITE_6, Op.WRITE_10, Op.WRITE_12, Op.WRITE_16}, write),
    ({Op.VERIFY_10, Op.VERIFY_12, Op.VERIFY_16}, verify),
    ({Op.WRITE_VERIFY_10, Op.WRITE_VERIFY_12, Op.WRITE_VERIFY_16}, write_verify),
    ({Op.ORWRITE_16}, orwrite), ({Op.COMPARE_AND_WRITE}, compare_and_write),
    ({Op.WRITE_SAME_10, Op.WRITE_SAME_16}, write_same), ({Op.UNMAP}, unmap),
    ({Op.SYNCHRONIZE_CACHE_10, Op.SYNCHRONIZE_CACHE_16}, sync_cache),
    ({Op.PRE_FETCH_10, Op.PRE_FETCH_16}, prefetch),
    ({Op.READ_CAPACITY_10}, read_capacity_10), ({Op.SERVICE_ACTION_IN_16}, service_action_in),
    ({Op.START_STOP_UNIT}, start_stop), ({Op.PREVENT_ALLOW}, prevent_allow),
    ({Op.READ_DEFECT_DATA_10, Op.READ_DEFECT_DATA_12}, read_defect_data),
):
    for _op in _ops:
        HANDLERS[_op] = _fn
