"""CDB builders for the initiator (SBC-3/SPC-4)."""

from __future__ import annotations

from .constants import SA_GET_LBA_STATUS, SA_READ_CAPACITY_16, Op

FUA = 0x08  # READ/WRITE byte 1: force unit access
DBD = 0x08  # MODE SENSE byte 1: disable block descriptors


def inquiry(alloc: int = 96, page: int | None = None) -> bytes:
    evpd, code = (1, page) if page is not None else (0, 0)
    return bytes([Op.INQUIRY, evpd, code]) + alloc.to_bytes(2, "big") + b"\0"


def test_unit_ready() -> bytes:
    return bytes([Op.TEST_UNIT_READY]) + bytes(5)


def read_capacity_10() -> bytes:
    return bytes([Op.READ_CAPACITY_10]) + bytes(9)


def read_capacity_16(alloc: int = 32) -> bytes:
    return bytes([Op.SERVICE_ACTION_IN_16, SA_READ_CAPACITY_16]) + bytes(8) + \
        alloc.to_bytes(4, "big") + b"\0\0"


def report_luns(alloc: int = 4096) -> bytes:
    return bytes([Op.REPORT_LUNS, 0, 0, 0, 0, 0]) + alloc.to_bytes(4, "big") + b"\0\0"


def mode_sense_6(page: int = 0x3F, alloc: int = 255, dbd: bool = True) -> bytes:
    return bytes([Op.MODE_SENSE_6, DBD if dbd else 0, page & 0x3F, 0, alloc & 0xFF, 0])


def read(lba: int, blocks: int) -> bytes:
    if lba < 1 << 32 and blocks < 1 << 16:
        return bytes([Op.READ_10, 0]) + lba.to_bytes(4, "big") + b"\0" + \
            blocks.to_bytes(2, "big") + b"\0"
    return bytes([Op.READ_16, 0]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + b"\0\0"


def write(lba: int, blocks: int, fua: bool = False) -> bytes:
    flags = FUA if fua else 0
    if lba < 1 << 32 and blocks < 1 << 16:
        return bytes([Op.WRITE_10, flags]) + lba.to_bytes(4, "big") + b"\0" + \
            blocks.to_bytes(2, "big") + b"\0"
    return bytes([Op.WRITE_16, flags]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + \
        b"\0\0"


def synchronize_cache() -> bytes:
    return bytes([Op.SYNCHRONIZE_CACHE_10]) + bytes(9)


def unmap(ranges: list[tuple[int, int]]) -> tuple[bytes, bytes]:
    """(CDB, parameter list) for UNMAP of (lba, blocks) ranges."""
    descs = b"".join(lba.to_bytes(8, "big") + n.to_bytes(4, "big") + bytes(4)
                     for lba, n in ranges)
    params = (len(descs) + 6).to_bytes(2, "big") + len(descs).to_bytes(2, "big") + bytes(4) + descs
    return bytes([Op.UNMAP, 0, 0, 0, 0, 0, 0]) + len(params).to_bytes(2, "big") + b"\0", params


UNMAP_BIT = 0x08  # WRITE SAME byte 1: deallocate the blocks
NDOB = 0x01  # WRITE SAME(16) byte 1: no data-out buffer, the block is zeros


def write_same_16(lba: int, blocks: int, *, unmap: bool = False, ndob: bool = False) -> bytes:
    """WRITE SAME(16): one block of data (none with NDOB: zeros) written to ``blocks``
    blocks at ``lba``; with UNMAP the target may deallocate them instead."""
    flags = (UNMAP_BIT if unmap else 0) | (NDOB if ndob else 0)
    return bytes([Op.WRITE_SAME_16, flags]) + lba.to_bytes(8, "big") + \
        blocks.to_bytes(4, "big") + b"\0\0"


def get_lba_status(lba: int, alloc: int = 4096) -> bytes:
    """GET LBA STATUS (SERVICE ACTION IN(16)): the provisioning status of the blocks
    from ``lba`` on, as descriptors of (first LBA, blocks, status)."""
    return bytes([Op.SERVICE_ACTION_IN_16, SA_GET_LBA_STATUS]) + lba.to_bytes(8, "big") + \
        alloc.to_bytes(4, "big") + b"\0\0"


def parse_lba_status(data: bytes) -> list[tuple[int, int, int]]:
    """The (first LBA, blocks, provisioning status) descriptors of a GET LBA STATUS
    answer: status 0 mapped, 1 deallocated, 2 anchored."""
    if len(data) < 8:
        return []
    end = min(len(data), 4 + int.from_bytes(data[0:4], "big"))
    return [(int.from_bytes(data[i : i + 8], "big"), int.from_bytes(data[i + 8 : i + 12], "big"),
             data[i + 12] & 0x0F) for i in range(8, end - 15, 16)]
