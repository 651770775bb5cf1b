"""Data-in pages a disk LU returns: INQUIRY and VPD, READ CAPACITY, mode pages, opcodes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from blockbridge.scsi.constants import Op

VENDOR = b"BLKBRDG "
PRODUCT = b"blockbridge disk"
REVISION = b"0001"
VERSION_DESCRIPTORS = (0x00A0, 0x0960, 0x0460, 0x04C0)  # SAM-5, iSCSI, SPC-4, SBC-3
SUPPORTED_VPD = (0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2)


# What a LU says about itself: identity derived without any process state, so a LUN keeps
# its serial and designators across restarts and reloads of the target.
IDENTITY_DOMAIN = b"blockbridge LU identity v1"


def identity_digest(kind: str, *fields: str) -> bytes:
    """SHA-256 of IDENTITY_DOMAIN, then KIND and each field as a 4-byte length and UTF-8.

    The length prefixes keep ("ab", "c") and ("a", "bc") apart; KIND keeps digests made for
    different purposes apart.
    """
    h = hashlib.sha256(IDENTITY_DOMAIN)
    for part in (kind, *fields):
        raw = part.encode()
        h.update(len(raw).to_bytes(4, "big") + raw)
    return h.digest()


def naa_locally_assigned(digest: bytes) -> bytes:
    """An NAA locally assigned designator (SPC-4): NAA field 3h, then 60 bits of DIGEST."""
    value = int.from_bytes(digest[:8], "big") >> 4
    return (0x3 << 60 | value).to_bytes(8, "big")


@dataclass(frozen=True)
class Identity:
    """The identity of one LU on VPD pages 0x80 and 0x83; build it with :meth:`derive`."""

    target_name: str
    lun: int
    serial: str  # VPD 0x80, printable ASCII
    scsi_id: str  # vendor specific part of the T10 vendor ID designator
    naa: bytes  # 8 bytes, NAA locally assigned
    tpgt: int = 1
    relative_port: int = 1

    @classmethod
    def derive(cls, target_name: str, lun: int, *, scsi_id: str | None = None,
               serial: str | None = None) -> Identity:
        """The identity of LUN LUN of TARGET_NAME, the same in every process.

        The LU's id is SCSI_ID (ietd.conf ScsiId) or else 16 hex digits of a digest of the
        target name and LUN number. The T10 vendor ID designator carries the id, the NAA
        designator comes from a digest of it, and the serial is SERIAL (ScsiSN) or the id.
        So a ScsiId set to the id a LU has now keeps all of it when the target is renamed.
        """
        ident = scsi_id or identity_digest("lu", target_name, str(lun))[:8].hex()
        naa = naa_locally_assigned(identity_digest("id", ident))
        return cls(target_name, lun, serial or ident, ident, naa)


@dataclass
class Geometry:
    block_size: int
    blocks: int
    can_unmap: bool
    max_transfer_blocks: int
    trim_zeroes: bool = True  # unmapped blocks read back as zeros (LBPRZ)
    max_unmap_blocks: int = 0x100000
    max_unmap_descriptors: int = 256
    max_write_same_blocks: int = 0x400000
    max_compare_and_write: int = 255


def standard_inquiry(read_only: bool) -> bytes:
    out = bytearray(96)
    out[0] = 0x00  # direct access block device, connected
    out[2] = 0x06  # SPC-4
    out[3] = 0x12  # HISUP, response data format 2
    out[4] = len(out) - 5
    out[7] = 0x02  # CMDQUE
    out[8:16] = VENDOR
    out[16:32] = PRODUCT.ljust(16)
    out[32:36] = REVISION
    for i, d in enumerate(VERSION_DESCRIPTORS):
        out[58 + 2 * i : 60 + 2 * i] = d.to_bytes(2, "big")
    return bytes(out)


def _vpd(page: int, body: bytes) -> bytes:
    return bytes([0, page]) + len(body).to_bytes(2, "big") + body


def _designator(code_set: int, assoc: int, dtype: int, value: bytes, piv: bool = False) -> bytes:
    b0 = (0x5 << 4 | code_set) if piv else code_set  # protocol id 5 = iSCSI
    b1 = (0x80 if piv else 0) | (assoc << 4) | dtype
    return bytes([b0, b1, 0, len(value)]) + value


def _scsi_name(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return raw + b"\0" * (-len(raw) % 4)


def vpd_page(page: int, ident: Identity, geo: Geometry) -> bytes | None:
    if page == 0x00:
        return _vpd(0x00, bytes(SUPPORTED_VPD))
    if page == 0x80:
        return _vpd(0x80, ident.serial.encode()[:32])
    if page == 0x83:
        body = _designator(1, 0, 3, ident.naa)  # NAA, LU
        body += _designator(2, 0, 1, VENDOR + ident.scsi_id.encode()[:32])  # T10 vendor id
        body += _designator(1, 1, 4, ident.relative_port.to_bytes(4, "big"), piv=True)
        body += _designator(1, 1, 5, ident.tpgt.to_bytes(4, "big"), piv=True)
        port = f"{ident.target_name},t,0x{ident.tpgt:04x}"
        body += _designator(3, 1, 8, _scsi_name(port), piv=True)
        body += _designator(3, 2, 8, _scsi_name(ident.target_name), piv=True)
        return _vpd(0x83, body)
    if page == 0xB0:
        b = bytearray(0x3C)
        b[1] = min(geo.max_compare_and_write, 255)
        b[2:4] = (1).to_bytes(2, "big")  # optimal transfer length granularity
        b[4:8] = geo.max_transfer_blocks.to_bytes(4, "big")
        b[8:12] = min(geo.max_transfer_blocks, 1024 * 1024 // geo.block_size).to_bytes(4, "big")
        b[12:16] = geo.max_transfer_blocks.to_bytes(4, "big")  # max prefetch length
        if geo.can_unmap:
            b[16:20] = geo.max_unmap_blocks.to_bytes(4, "big")
            b[20:24] = geo.max_unmap_descriptors.to_bytes(4, "big")
            gran = max(4096 // geo.block_size, 1)
            b[24:28] = gran.to_bytes(4, "big")
            b[28:32] = (0x80000000).to_bytes(4, "big")  # UGAVALID, alignment 0
        b[32:40] = geo.max_write_same_blocks.to_bytes(8, "big")
        return _vpd(0xB0, bytes(b))
    if page == 0xB1:
        b = bytearray(0x3C)
        b[0:2] = (1).to_bytes(2, "big")  # non-rotating medium
        b[3] = 0  # form factor not reported
        return _vpd(0xB1, bytes(b))
    if page == 0xB2:
        flags = 0
        if geo.can_unmap:
            flags = 0x80 | 0x40 | 0x20  # LBPU, LBPWS, LBPWS10
            flags |= 0x04 if geo.trim_zeroes else 0  # LBPRZ
        return _vpd(0xB2, bytes([0, flags, 0x02 if geo.can_unmap else 0x00, 0]))
    return None


def read_capacity_10(geo: Geometry) -> bytes:
    last = min(geo.blocks - 1, 0xFFFFFFFF)
    return last.to_bytes(4, "big") + geo.block_size.to_bytes(4, "big")


def read_capacity_16(geo: Geometry) -> bytes:
    out = bytearray(32)
    out[0:8] = (geo.blocks - 1).to_bytes(8, "big")
    out[8:12] = geo.block_size.to_bytes(4, "big")
    if geo.can_unmap:
        out[14] = 0x80 | (0x40 if geo.trim_zeroes else 0)  # LBPME, LBPRZ
    return bytes(out)


# ------------------------------------------------------------------ mode pages


@dataclass
class ModeState:
    write_cache: bool
    d_sense: bool = False
    swp: bool = False


def mode_page(page: int, state: ModeState, pc: int) -> bytes | None:
    """One mode page; pc 0 current/3 saved/2 default, 1 changeable mask."""
    changeable = pc == 1
    if page == 0x01:  # read-write error recovery
        return bytes([0x01, 0x0A, 0 if changeable else 0xC0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    if page == 0x08:  # caching
        b = bytearray(20)
        b[0], b[1] = 0x08, 0x12
        if changeable or state.write_cache:
            b[2] = 0x04
        return bytes(b)
    if page == 0x0A:  # control
        b = bytearray(12)
        b[0], b[1] = 0x0A, 0x0A
        if changeable:
            b[2] = 0x04  # D_SENSE
            b[4] = 0x08  # SWP
        else:
            b[2] = 0x04 if state.d_sense else 0
            b[3] = 0x10  # QUEUE ALGORITHM MODIFIER: unrestricted reordering
            b[4] = 0x08 if state.swp else 0
            b[8:10] = b"\xff\xff"  # busy timeout period
        return bytes(b)
    if page == 0x1C:  # informational exceptions control
        b = bytearray(12)
        b[0], b[1] = 0x1C, 0x0A
        return bytes(b)
    return None


ALL_MODE_PAGES = (0x01, 0x08, 0x0A, 0x1C)


# ------------------------------------------------------------------ supported opcodes

# opcode, service action or None, CDB length, usage bitmap
_C = list[tuple[int, int | None, int]]
SUPPORTED_COMMANDS: _C = [
    (Op.TEST_UNIT_READY, None, 6), (Op.REQUEST_SENSE, None, 6), (Op.READ_6, None, 6),
    (Op.WRITE_6, None, 6), (Op.INQUIRY, None, 6), (Op.MODE_SELECT_6, None, 6),
    (Op.RESERVE_6, None, 6), (Op.RELEASE_6, None, 6), (Op.MODE_SENSE_6, None, 6),
    (Op.START_STOP_UNIT, None, 6), (Op.PREVENT_ALLOW, None, 6),
    (Op.READ_CAPACITY_10, None, 10), (Op.READ_10, None, 10), (Op.WRITE_10, None, 10),
    (Op.WRITE_VERIFY_10, None, 10), (Op.VERIFY_10, None, 10), (Op.PRE_FETCH_10, None, 10),
    (Op.SYNCHRONIZE_CACHE_10, None, 10), (Op.READ_DEFECT_DATA_10, None, 10),
    (Op.WRITE_SAME_10, None, 10), (Op.UNMAP, None, 10), (Op.MODE_SELECT_10, None, 10),
    (Op.MODE_SENSE_10, None, 10),
    *[(Op.PERSISTENT_RESERVE_IN, sa, 10) for sa in range(4)],
    *[(Op.PERSISTENT_RESERVE_OUT, sa, 10) for sa in range(7)],
    (Op.READ_16, None, 16), (Op.COMPARE_AND_WRITE, None, 16), (Op.WRITE_16, None, 16),
    (Op.ORWRITE_16, None, 16), (Op.WRITE_VERIFY_16, None, 16), (Op.VERIFY_16, None, 16),
    (Op.PRE_FETCH_16, None, 16), (Op.SYNCHRONIZE_CACHE_16, None, 16),
    (Op.WRITE_SAME_16, None, 16),
    (Op.SERVICE_ACTION_IN_16, 0x10, 16), (Op.SERVICE_ACTION_IN_16, 0x12, 16),
    (Op.REPORT_LUNS, None, 12), (Op.MAINTENANCE_IN, 0x0C, 12),
    (Op.READ_12, None, 12), (Op.WRITE_12, None, 12), (Op.WRITE_VERIFY_12, None, 12),
    (Op.VERIFY_12, None, 12), (Op.READ_DEFECT_DATA_12, None, 12),
]
_HAS_SA = {op for op, sa, _ in SUPPORTED_COMMANDS if sa is not None}


def _usage(op: int, sa: int | None, length: int) -> bytes:
    usage = bytearray([0xFF] * length)
    usage[0] = op
    if sa is not None:
        usage[1] = 0xE0 | sa if op in (Op.PERSISTENT_RESERVE_IN, Op.PERSISTENT_RESERVE_OUT) \
            else sa
    usage[-1] = 0x07  # control byte: NACA, LINK bits
    return bytes(usage)


_TIMEOUTS = bytes([0, 10, 0, 0]) + (30).to_bytes(4, "big") + (60).to_bytes(4, "big")


def report_supported_opcodes(options: int, op: int, sa: int, rctd: bool,
                             commands: _C = SUPPORTED_COMMANDS) -> bytes | None:
    """REPORT SUPPORTED OPERATION CODES data, of ``commands`` (those of the unit); None
    means INVALID FIELD IN CDB."""
    if options == 0:
        body = b""
        for c_op, c_sa, length in commands:
            flags = (0x02 if rctd else 0) | (0x01 if c_sa is not None else 0)
            body += bytes([c_op, 0]) + (c_sa or 0).to_bytes(2, "big")
            body += bytes([0, flags]) + length.to_bytes(2, "big")
            if rctd:
                body += _TIMEOUTS
        return len(body).to_bytes(4, "big") + body
    if options in (1, 2, 3):
        if options == 1 and op in _HAS_SA:
            return None
        if options == 2 and op not in _HAS_SA:
            return None
        want_sa = sa if (options == 2 or (options == 3 and op in _HAS_SA)) else None
        match = [c for c in commands if c[0] == op and c[1] == want_sa]
        if not match:
            return bytes([0, 0x01, 0, 0])  # not supported
        c_op, c_sa, length = match[0]
        head = bytes([0, (0x80 if rctd else 0) | 0x03]) + length.to_bytes(2, "big")
        return head + _usage(c_op, c_sa, length) + (_TIMEOUTS if rctd else b"")
    return None
