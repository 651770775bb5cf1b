"""CDBs (SBC-3/SPC-4): one layout for each, used both to build them (the initiator) and to
parse them (the target).

The block commands share a layout by CDB size (``LBA_LAYOUT``): where the LOGICAL BLOCK
ADDRESS and the length field sit.  A parser raises :class:`CheckCondition` (INVALID FIELD
IN CDB, or PARAMETER LIST LENGTH ERROR for a parameter list) on input it cannot use.
"""

from __future__ import annotations

from .constants import (
    PARAMETER_LIST_LENGTH_ERROR,
    SA_GET_LBA_STATUS,
    SA_READ_CAPACITY_16,
    Op,
    SenseKey,
)
from .sense import CheckCondition, invalid_field_in_cdb

FUA = 0x08  # READ/WRITE byte 1: force unit access
DBD = 0x08  # MODE SENSE byte 1: disable block descriptors
UNMAP_BIT = 0x08  # WRITE SAME byte 1: deallocate the blocks
NDOB = 0x01  # WRITE SAME(16) byte 1: no data-out buffer, the block is zeros

# CDB size -> (LBA offset, LBA bytes, length offset, length bytes)
LBA_LAYOUT = {10: (2, 4, 7, 2), 12: (2, 4, 6, 4), 16: (2, 8, 10, 4)}


_GROUP_SIZE = (6, 10, 10, 10, 16, 12, 10, 10)  # by group code (op >> 5); 3, 6, 7: none


def cdb_size(op: int) -> int:
    """The CDB length its operation code's group gives (SPC-4 4.2.5.1)."""
    return _GROUP_SIZE[op >> 5]


def length_field(op: int) -> int:
    """The byte where the length field of a block command starts (for sense pointers)."""
    size = cdb_size(op)
    return 4 if size == 6 else LBA_LAYOUT[size][2]


# ------------------------------------------------------------------ block commands


def lba_cdb(op: int, lba: int, blocks: int, flags: int = 0) -> bytes:
    """A READ/WRITE/VERIFY/WRITE SAME/SYNCHRONIZE CACHE/PRE-FETCH-style CDB of ``op``."""
    size = cdb_size(op)
    if size == 6:  # READ(6), WRITE(6): 21-bit LBA, 0 blocks means 256
        if lba >= 1 << 21 or not 0 < blocks <= 256:
            raise ValueError(f"LBA {lba} or {blocks} blocks do not fit a 6-byte CDB")
        return bytes([op, lba >> 16, (lba >> 8) & 0xFF, lba & 0xFF, blocks & 0xFF, 0])
    at, lba_len, n_at, n_len = LBA_LAYOUT[size]
    out = bytearray(size)
    out[0], out[1] = op, flags
    out[at : at + lba_len] = lba.to_bytes(lba_len, "big")
    out[n_at : n_at + n_len] = blocks.to_bytes(n_len, "big")
    return bytes(out)


def parse_lba_cdb(cdb: bytes) -> tuple[int, int, int]:
    """(LBA, number of blocks, byte 1) of a CDB built by :func:`lba_cdb`."""
    size = _GROUP_SIZE[cdb[0] >> 5]
    if len(cdb) < size:
        raise invalid_field_in_cdb()
    if size == 10:  # the most common: READ(10), WRITE(10)
        return int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[7:9], "big"), cdb[1]
    if size == 6:
        return ((cdb[1] & 0x1F) << 16) | (cdb[2] << 8) | cdb[3], cdb[4] or 256, 0
    at, lba_len, n_at, n_len = LBA_LAYOUT[size]
    return (int.from_bytes(cdb[at : at + lba_len], "big"),
            int.from_bytes(cdb[n_at : n_at + n_len], "big"), cdb[1])


def read(lba: int, blocks: int) -> bytes:
    if lba < 1 << 32 and blocks < 1 << 16:
        return lba_cdb(Op.READ_10, lba, blocks)
    return lba_cdb(Op.READ_16, lba, blocks)


def write(lba: int, blocks: int, fua: bool = False) -> bytes:
    flags = FUA if fua else 0
    if lba < 1 << 32 and blocks < 1 << 16:
        return lba_cdb(Op.WRITE_10, lba, blocks, flags)
    return lba_cdb(Op.WRITE_16, lba, blocks, flags)


def synchronize_cache(lba: int = 0, blocks: int = 0) -> bytes:
    """SYNCHRONIZE CACHE(10) of ``blocks`` from ``lba`` (0 blocks: to the end)."""
    return lba_cdb(Op.SYNCHRONIZE_CACHE_10, lba, blocks)


def write_same_16(lba: int, blocks: int, *, unmap: bool = False, ndob: bool = False) -> bytes:
    """WRITE SAME(16): one block of data (none with NDOB: zeros) written to ``blocks``
    blocks at ``lba``; with UNMAP the target may deallocate them instead."""
    flags = (UNMAP_BIT if unmap else 0) | (NDOB if ndob else 0)
    return lba_cdb(Op.WRITE_SAME_16, lba, blocks, flags)


def compare_and_write(lba: int, blocks: int, *, fua: bool = False) -> bytes:
    """COMPARE AND WRITE: ``blocks`` (at most 255) to compare, then as many to write."""
    return bytes([Op.COMPARE_AND_WRITE, FUA if fua else 0]) + lba.to_bytes(8, "big") + \
        bytes(3) + bytes([blocks, 0, 0])


def parse_compare_and_write(cdb: bytes) -> tuple[int, int, int]:
    """(LBA, number of blocks, byte 1) of COMPARE AND WRITE."""
    if len(cdb) < 16:
        raise invalid_field_in_cdb()
    return int.from_bytes(cdb[2:10], "big"), cdb[13], cdb[1]


def get_lba_status(lba: int, alloc: int = 4096) -> bytes:
    """GET LBA STATUS (SERVICE ACTION IN(16)): the provisioning status of the blocks
    from ``lba`` on, as descriptors of (first LBA, blocks, status)."""
    return bytes([Op.SERVICE_ACTION_IN_16, SA_GET_LBA_STATUS]) + lba.to_bytes(8, "big") + \
        alloc.to_bytes(4, "big") + b"\0\0"


def parse_get_lba_status(cdb: bytes) -> tuple[int, int]:
    """(starting LBA, allocation length) of GET LBA STATUS."""
    if len(cdb) < 16:
        raise invalid_field_in_cdb()
    return int.from_bytes(cdb[2:10], "big"), int.from_bytes(cdb[10:14], "big")


def lba_status(descriptors: list[tuple[int, int, int]]) -> bytes:
    """GET LBA STATUS parameter data of (first LBA, blocks, provisioning status)."""
    body = b"".join(lba.to_bytes(8, "big") + n.to_bytes(4, "big") + bytes([status, 0, 0, 0])
                    for lba, n, status in descriptors)
    return (len(body) + 4).to_bytes(4, "big") + bytes(4) + body


def parse_lba_status(data: bytes) -> list[tuple[int, int, int]]:
    """The (first LBA, blocks, provisioning status) descriptors of a GET LBA STATUS
    answer: status 0 mapped, 1 deallocated, 2 anchored."""
    if len(data) < 8:
        return []
    end = min(len(data), 4 + int.from_bytes(data[0:4], "big"))
    return [(int.from_bytes(data[i : i + 8], "big"), int.from_bytes(data[i + 8 : i + 12], "big"),
             data[i + 12] & 0x0F) for i in range(8, end - 15, 16)]


def unmap(ranges: list[tuple[int, int]]) -> tuple[bytes, bytes]:
    """(CDB, parameter list) for UNMAP of (lba, blocks) ranges."""
    descs = b"".join(lba.to_bytes(8, "big") + n.to_bytes(4, "big") + bytes(4)
                     for lba, n in ranges)
    params = (len(descs) + 6).to_bytes(2, "big") + len(descs).to_bytes(2, "big") + bytes(4) + descs
    return bytes([Op.UNMAP, 0, 0, 0, 0, 0, 0]) + len(params).to_bytes(2, "big") + b"\0", params


def parse_unmap(cdb: bytes) -> tuple[bool, int]:
    """(ANCHOR, parameter list length) of UNMAP."""
    if len(cdb) < 10:
        raise invalid_field_in_cdb()
    return bool(cdb[1] & 0x01), int.from_bytes(cdb[7:9], "big")


def parse_unmap_parameters(params: bytes) -> list[tuple[int, int]]:
    """The (lba, blocks) descriptors of an UNMAP parameter list."""
    if len(params) < 8:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, PARAMETER_LIST_LENGTH_ERROR)
    dlen = int.from_bytes(params[2:4], "big")
    descs = params[8 : 8 + dlen]
    if dlen % 16 or len(descs) < dlen:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, PARAMETER_LIST_LENGTH_ERROR)
    return [(int.from_bytes(descs[i : i + 8], "big"), int.from_bytes(descs[i + 8 : i + 12], "big"))
            for i in range(0, dlen, 16)]


# ------------------------------------------------------------------ SPC and capacity


def inquiry(alloc: int = 96, page: int | None = None) -> bytes:
    evpd, code = (1, page) if page is not None else (0, 0)
    return bytes([Op.INQUIRY, evpd, code]) + alloc.to_bytes(2, "big") + b"\0"


def parse_inquiry(cdb: bytes) -> tuple[int, int | None, int]:
    """(byte 1, VPD page or None for standard data, allocation length) of INQUIRY."""
    if len(cdb) < 6:
        raise invalid_field_in_cdb()
    return cdb[1], cdb[2] if cdb[1] & 0x01 else None, int.from_bytes(cdb[3:5], "big")


def test_unit_ready() -> bytes:
    return bytes([Op.TEST_UNIT_READY]) + bytes(5)


def read_capacity_10() -> bytes:
    return bytes([Op.READ_CAPACITY_10]) + bytes(9)


def read_capacity_16(alloc: int = 32) -> bytes:
    return bytes([Op.SERVICE_ACTION_IN_16, SA_READ_CAPACITY_16]) + bytes(8) + \
        alloc.to_bytes(4, "big") + b"\0\0"


def report_luns(alloc: int = 4096) -> bytes:
    return bytes([Op.REPORT_LUNS, 0, 0, 0, 0, 0]) + alloc.to_bytes(4, "big") + b"\0\0"


def parse_report_luns(cdb: bytes) -> int:
    """The allocation length of REPORT LUNS."""
    if len(cdb) < 12:
        raise invalid_field_in_cdb()
    return int.from_bytes(cdb[6:10], "big")


def mode_sense_6(page: int = 0x3F, alloc: int = 255, dbd: bool = True) -> bytes:
    return bytes([Op.MODE_SENSE_6, DBD if dbd else 0, page & 0x3F, 0, alloc & 0xFF, 0])
