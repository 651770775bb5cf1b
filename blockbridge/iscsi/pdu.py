"""The iSCSI PDU codec: one dataclass per opcode, 48-byte BHS in and out.

``encode_bhs()`` returns the 48-byte Basic Header Segment (the data segment length
is filled in from ``data``); ``decode(bhs, ahs, data)`` builds the dataclass back and
raises :class:`PDUFormatError` for anything malformed.  Framing (AHS, padding and
digests on a byte stream) lives in :mod:`blockbridge.iscsi.framing`.

PDUs are values: nobody changes one after it is made (derive a new one with
``dataclasses.replace``).  They are not declared frozen because a frozen dataclass costs
about five times as much to construct, and every command makes two or three of them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from .constants import (
    BHS_LENGTH,
    RESERVED_TAG,
    AhsType,
    LogoutResponseCode,
    Opcode,
    RejectReason,
    ServiceResponse,
    Stage,
    TaskAttribute,
    TaskResponse,
)
from .errors import PDUFormatError

Buffer: TypeAlias = bytes | bytearray | memoryview

MAX_DATA_SEGMENT = (1 << 24) - 1

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def encode_lun(lun: int) -> int:
    """SAM single-level LUN number -> 8-byte LUN field (peripheral or flat addressing)."""
    if lun < 0 or lun > 0x3FFF:
        raise ValueError(f"LUN {lun} out of range 0..16383")
    if lun < 256:
        return lun << 48
    return (0x4000 | lun) << 48


def decode_lun(field_value: int) -> int:
    """8-byte LUN field -> LUN number (peripheral and flat addressing; others are returned raw)."""
    top = field_value >> 48
    method = top >> 14
    if method in (0, 1) and field_value & 0xFFFFFFFFFFFF == 0:
        return top & 0x3FFF
    return field_value


def _data_len(data: Buffer) -> int:
    n = len(data) if not isinstance(data, memoryview) else data.nbytes
    if n > MAX_DATA_SEGMENT:
        raise ValueError("data segment longer than 16 MiB")
    return n


@dataclass(slots=True)
class PDU:
    """Fields shared by every PDU.  ``data`` is the data segment without padding."""

    opcode: ClassVar[Opcode]
    itt: int = RESERVED_TAG
    data: Buffer = b""

    def encode_bhs(self) -> bytearray:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> PDU:  # pragma: no cover
        raise NotImplementedError

    def _start(self, flags: int, immediate: bool = False) -> bytearray:
        h = bytearray(BHS_LENGTH)
        h[0] = int(self.opcode) | (0x40 if immediate else 0)
        h[1] = flags
        n = _data_len(self.data)
        h[5] = (n >> 16) & 0xFF
        h[6] = (n >> 8) & 0xFF
        h[7] = n & 0xFF
        _U32.pack_into(h, 16, self.itt)
        return h

    @property
    def ahs(self) -> bytes:
        """Additional header segments, already padded to 4 bytes each."""
        return b""


# Whole headers of the PDUs that arrive most, unpacked in one call.
_DATA_IN = struct.Struct(">xBxB4xQIIIIIIII")  # flags, status, LUN, ITT, TTT .. residual
_SCSI_RESPONSE = struct.Struct(">xBBB12xIIIIIIII")  # flags, response, status, ITT ..
_SCSI_COMMAND = struct.Struct(">BBxxIQIIII16s")  # opcode, flags, length, LUN, ITT .. CDB


def _u32(b: Buffer, off: int) -> int:
    return int(_U32.unpack_from(b, off)[0])


def _u64(b: Buffer, off: int) -> int:
    return int(_U64.unpack_from(b, off)[0])


def _u16(b: Buffer, off: int) -> int:
    return (b[off] << 8) | b[off + 1]


def _put_u16(h: bytearray, off: int, v: int) -> None:
    h[off] = (v >> 8) & 0xFF
    h[off + 1] = v & 0xFF


# ---------------------------------------------------------------- initiator PDUs


@dataclass(slots=True)
class NopOut(PDU):
    opcode: ClassVar[Opcode] = Opcode.NOP_OUT
    ttt: int = RESERVED_TAG
    lun: int = 0
    cmdsn: int = 0
    expstatsn: int = 0
    immediate: bool = True

    def encode_bhs(self) -> bytearray:
        h = self._start(0x80, self.immediate)
        _U64.pack_into(h, 8, self.lun)
        _U32.pack_into(h, 20, self.ttt)
        _U32.pack_into(h, 24, self.cmdsn)
        _U32.pack_into(h, 28, self.expstatsn)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> NopOut:
        return cls(
            itt=_u32(bhs, 16), data=data, ttt=_u32(bhs, 20), lun=_u64(bhs, 8),
            cmdsn=_u32(bhs, 24), expstatsn=_u32(bhs, 28), immediate=bool(bhs[0] & 0x40),
        )


@dataclass(slots=True)
class SCSICommand(PDU):
    opcode: ClassVar[Opcode] = Opcode.SCSI_COMMAND
    lun: int = 0
    cdb: bytes = b""
    expected_length: int = 0
    cmdsn: int = 0
    expstatsn: int = 0
    read: bool = False
    write: bool = False
    final: bool = True
    attr: int = TaskAttribute.SIMPLE
    immediate: bool = False
    bidi_read_length: int | None = None

    def encode_bhs(self) -> bytearray:
        flags = (0x80 if self.final else 0) | (0x40 if self.read else 0)
        flags |= (0x20 if self.write else 0) | (self.attr & 7)
        cdb = self.cdb
        if len(cdb) <= 16 and self.bidi_read_length is None:  # no AHS: one pack
            h = bytearray(BHS_LENGTH)
            _SCSI_COMMAND.pack_into(
                h, 0, int(self.opcode) | (0x40 if self.immediate else 0), flags,
                _data_len(self.data), self.lun, self.itt, self.expected_length, self.cmdsn,
                self.expstatsn, cdb)
            return h
        if len(cdb) - 16 > 1020:
            raise ValueError("CDB too long")
        h = self._start(flags, self.immediate)
        ahs = self.ahs
        h[4] = len(ahs) // 4
        _U64.pack_into(h, 8, self.lun)
        _U32.pack_into(h, 20, self.expected_length)
        _U32.pack_into(h, 24, self.cmdsn)
        _U32.pack_into(h, 28, self.expstatsn)
        head = self.cdb[:16]
        h[32 : 32 + len(head)] = head
        return h

    @property
    def ahs(self) -> bytes:
        if len(self.cdb) <= 16 and self.bidi_read_length is None:
            return b""
        out = bytearray()
        if len(self.cdb) > 16:
            extra = self.cdb[16:]
            seg = bytearray(struct.pack(">HBB", len(extra) + 1, AhsType.EXTENDED_CDB, 0))
            seg += extra
            seg += b"\0" * (-len(seg) % 4)
            out += seg
        if self.bidi_read_length is not None:
            out += struct.pack(">HBBI", 5, AhsType.BIDI_READ_LENGTH, 0, self.bidi_read_length)
        return bytes(out)

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> SCSICommand:
        cdb = bytes(bhs[32:48])
        bidi: int | None = None
        for ahs_type, value in iter_ahs(ahs):
            if ahs_type == AhsType.EXTENDED_CDB:
                cdb += bytes(value[1:])
            elif ahs_type == AhsType.BIDI_READ_LENGTH and len(value) >= 5:
                bidi = _u32(value, 1)
        flags = bhs[1]
        return cls(
            itt=_u32(bhs, 16), data=data, lun=_u64(bhs, 8), cdb=cdb,
            expected_length=_u32(bhs, 20), cmdsn=_u32(bhs, 24), expstatsn=_u32(bhs, 28),
            read=bool(flags & 0x40), write=bool(flags & 0x20), final=bool(flags & 0x80),
            attr=flags & 7, immediate=bool(bhs[0] & 0x40), bidi_read_length=bidi,
        )


@dataclass(slots=True)
class TaskManagementRequest(PDU):
    opcode: ClassVar[Opcode] = Opcode.TASK_MGMT_REQUEST
    function: int = 1
    lun: int = 0
    referenced_itt: int = RESERVED_TAG
    cmdsn: int = 0
    expstatsn: int = 0
    refcmdsn: int = 0
    expdatasn: int = 0
    immediate: bool = True

    def encode_bhs(self) -> bytearray:
        h = self._start(0x80 | (self.function & 0x7F), self.immediate)
        _U64.pack_into(h, 8, self.lun)
        _U32.pack_into(h, 20, self.referenced_itt)
        _U32.pack_into(h, 24, self.cmdsn)
        _U32.pack_into(h, 28, self.expstatsn)
        _U32.pack_into(h, 32, self.refcmdsn)
        _U32.pack_into(h, 36, self.expdatasn)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> TaskManagementRequest:
        return cls(
            itt=_u32(bhs, 16), data=data, function=bhs[1] & 0x7F, lun=_u64(bhs, 8),
            referenced_itt=_u32(bhs, 20), cmdsn=_u32(bhs, 24), expstatsn=_u32(bhs, 28),
            refcmdsn=_u32(bhs, 32), expdatasn=_u32(bhs, 36), immediate=bool(bhs[0] & 0x40),
        )


@dataclass(slots=True)
class LoginRequest(PDU):
    opcode: ClassVar[Opcode] = Opcode.LOGIN_REQUEST
    transit: bool = False
    cont: bool = False
    csg: Stage = Stage.SECURITY
    nsg: Stage = Stage.SECURITY
    version_max: int = 0
    version_min: int = 0
    isid: bytes = b"\0" * 6
    tsih: int = 0
    cid: int = 0
    cmdsn: int = 0
    expstatsn: int = 0

    def encode_bhs(self) -> bytearray:
        flags = (0x80 if self.transit else 0) | (0x40 if self.cont else 0)
        flags |= (int(self.csg) << 2) | (int(self.nsg) if self.transit else 0)
        h = self._start(flags, True)
        h[2] = self.version_max
        h[3] = self.version_min
        h[8:14] = self.isid
        _put_u16(h, 14, self.tsih)
        _put_u16(h, 20, self.cid)
        _U32.pack_into(h, 24, self.cmdsn)
        _U32.pack_into(h, 28, self.expstatsn)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> LoginRequest:
        flags = bhs[1]
        transit = bool(flags & 0x80)
        return cls(
            itt=_u32(bhs, 16), data=data, transit=transit, cont=bool(flags & 0x40),
            csg=_stage((flags >> 2) & 3), nsg=_stage(flags & 3) if transit else Stage.SECURITY,
            version_max=bhs[2], version_min=bhs[3], isid=bytes(bhs[8:14]), tsih=_u16(bhs, 14),
            cid=_u16(bhs, 20), cmdsn=_u32(bhs, 24), expstatsn=_u32(bhs, 28),
        )


@dataclass(slots=True)
class TextRequest(PDU):
    opcode: ClassVar[Opcode] = Opcode.TEXT_REQUEST
    final: bool = True
    cont: bool = False
    lun: int = 0
    ttt: int = RESERVED_TAG
    cmdsn: int = 0
    expstatsn: int = 0
    immediate: bool = True

    def encode_bhs(self) -> bytearray:
        h = self._start((0x80 if self.final else 0) | (0x40 if self.cont else 0), self.immediate)
        _U64.pack_into(h, 8, self.lun)
        _U32.pack_into(h, 20, self.ttt)
        _U32.pack_into(h, 24, self.cmdsn)
        _U32.pack_into(h, 28, self.expstatsn)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> TextRequest:
        return cls(
            itt=_u32(bhs, 16), data=data, final=bool(bhs[1] & 0x80), cont=bool(bhs[1] & 0x40),
            lun=_u64(bhs, 8), ttt=_u32(bhs, 20), cmdsn=_u32(bhs, 24), expstatsn=_u32(bhs, 28),
            immediate=bool(bhs[0] & 0x40),
        )


@dataclass(slots=True)
class DataOut(PDU):
    opcode: ClassVar[Opcode] = Opcode.DATA_OUT
    final: bool = True
    lun: int = 0
    ttt: int = RESERVED_TAG
    expstatsn: int = 0
    datasn: int = 0
    offset: int = 0

    def encode_bhs(self) -> bytearray:
        h = self._start(0x80 if self.final else 0)
        _U64.pack_into(h, 8, self.lun)
        _U32.pack_into(h, 20, self.ttt)
        _U32.pack_into(h, 28, self.expstatsn)
        _U32.pack_into(h, 36, self.datasn)
        _U32.pack_into(h, 40, self.offset)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> DataOut:
        return cls(
            itt=_u32(bhs, 16), data=data, final=bool(bhs[1] & 0x80), lun=_u64(bhs, 8),
            ttt=_u32(bhs, 20), expstatsn=_u32(bhs, 28), datasn=_u32(bhs, 36),
            offset=_u32(bhs, 40),
        )


@dataclass(slots=True)
class LogoutRequest(PDU):
    opcode: ClassVar[Opcode] = Opcode.LOGOUT_REQUEST
    reason: int = 0
    cid: int = 0
    cmdsn: int = 0
    expstatsn: int = 0
    immediate: bool = True

    def encode_bhs(self) -> bytearray:
        h = self._start(0x80 | (self.reason & 0x7F), self.immediate)
        _put_u16(h, 20, self.cid)
        _U32.pack_into(h, 24, self.cmdsn)
        _U32.pack_into(h, 28, self.expstatsn)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> LogoutRequest:
        return cls(
            itt=_u32(bhs, 16), data=data, reason=bhs[1] & 0x7F, cid=_u16(bhs, 20),
            cmdsn=_u32(bhs, 24), expstatsn=_u32(bhs, 28), immediate=bool(bhs[0] & 0x40),
        )


@dataclass(slots=True)
class SNACKRequest(PDU):
    opcode: ClassVar[Opcode] = Opcode.SNACK_REQUEST
    snack_type: int = 0
    lun: int = 0
    ttt: int = RESERVED_TAG
    expstatsn: int = 0
    begrun: int = 0
    runlength: int = 0

    def encode_bhs(self) -> bytearray:
        h = self._start(0x80 | (self.snack_type & 0x0F))
        _U64.pack_into(h, 8, self.lun)
        _U32.pack_into(h, 20, self.ttt)
        _U32.pack_into(h, 28, self.expstatsn)
        _U32.pack_into(h, 40, self.begrun)
        _U32.pack_into(h, 44, self.runlength)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> SNACKRequest:
        return cls(
            itt=_u32(bhs, 16), data=data, snack_type=bhs[1] & 0x0F, lun=_u64(bhs, 8),
            ttt=_u32(bhs, 20), expstatsn=_u32(bhs, 28), begrun=_u32(bhs, 40),
            runlength=_u32(bhs, 44),
        )


# ---------------------------------------------------------------- target PDUs


@dataclass(slots=True)
class NopIn(PDU):
    opcode: ClassVar[Opcode] = Opcode.NOP_IN
    ttt: int = RESERVED_TAG
    lun: int = 0
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0

    def encode_bhs(self) -> bytearray:
        h = self._start(0x80)
        _U64.pack_into(h, 8, self.lun)
        _U32.pack_into(h, 20, self.ttt)
        _U32.pack_into(h, 24, self.statsn)
        _U32.pack_into(h, 28, self.expcmdsn)
        _U32.pack_into(h, 32, self.maxcmdsn)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> NopIn:
        return cls(
            itt=_u32(bhs, 16), data=data, ttt=_u32(bhs, 20), lun=_u64(bhs, 8),
            statsn=_u32(bhs, 24), expcmdsn=_u32(bhs, 28), maxcmdsn=_u32(bhs, 32),
        )


@dataclass(slots=True)
class SCSIResponse(PDU):
    """SCSI Response.  ``data`` holds the raw segment: 2-byte SenseLength + sense data."""

    opcode: ClassVar[Opcode] = Opcode.SCSI_RESPONSE
    response: int = ServiceResponse.COMPLETED
    status: int = 0
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    expdatasn: int = 0
    residual_overflow: bool = False
    residual_underflow: bool = False
    residual_count: int = 0
    bidi_overflow: bool = False
    bidi_underflow: bool = False
    bidi_residual_count: int = 0
    snack_tag: int = 0

    @classmethod
    def with_sense(cls, sense: bytes, **kw: object) -> SCSIResponse:
        seg = len(sense).to_bytes(2, "big") + sense if sense else b""
        return cls(data=seg, **kw)  # type: ignore[arg-type]

    @property
    def sense(self) -> bytes:
        d = self.data
        if len(d) < 2:
            return b""
        n = (d[0] << 8) | d[1]
        return bytes(d[2 : 2 + n])

    def encode_bhs(self) -> bytearray:
        flags = 0x80 | (0x10 if self.bidi_overflow else 0) | (0x08 if self.bidi_underflow else 0)
        flags |= (0x04 if self.residual_overflow else 0) | (0x02 if self.residual_underflow else 0)
        h = self._start(flags)
        h[2] = self.response
        h[3] = self.status
        _U32.pack_into(h, 20, self.snack_tag)
        _U32.pack_into(h, 24, self.statsn)
        _U32.pack_into(h, 28, self.expcmdsn)
        _U32.pack_into(h, 32, self.maxcmdsn)
        _U32.pack_into(h, 36, self.expdatasn)
        _U32.pack_into(h, 40, self.bidi_residual_count)
        _U32.pack_into(h, 44, self.residual_count)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> SCSIResponse:
        (f, response, status, itt, snack_tag, statsn, expcmdsn, maxcmdsn, expdatasn,
         bidi_residual, residual) = _SCSI_RESPONSE.unpack_from(bhs)
        if (f & 0x06) == 0x06 or (f & 0x18) == 0x18:
            raise PDUFormatError("SCSI Response with both overflow and underflow set",
                                 RejectReason.INVALID_PDU_FIELD)
        return cls(itt, data, response, status, statsn, expcmdsn, maxcmdsn, expdatasn,
                   bool(f & 0x04), bool(f & 0x02), residual, bool(f & 0x10), bool(f & 0x08),
                   bidi_residual, snack_tag)


@dataclass(slots=True)
class TaskManagementResponse(PDU):
    opcode: ClassVar[Opcode] = Opcode.TASK_MGMT_RESPONSE
    response: int = TaskResponse.COMPLETE
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0

    def encode_bhs(self) -> bytearray:
        h = self._start(0x80)
        h[2] = self.response
        _U32.pack_into(h, 24, self.statsn)
        _U32.pack_into(h, 28, self.expcmdsn)
        _U32.pack_into(h, 32, self.maxcmdsn)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> TaskManagementResponse:
        return cls(
            itt=_u32(bhs, 16), data=data, response=bhs[2], statsn=_u32(bhs, 24),
            expcmdsn=_u32(bhs, 28), maxcmdsn=_u32(bhs, 32),
        )


@dataclass(slots=True)
class LoginResponse(PDU):
    opcode: ClassVar[Opcode] = Opcode.LOGIN_RESPONSE
    transit: bool = False
    cont: bool = False
    csg: Stage = Stage.SECURITY
    nsg: Stage = Stage.SECURITY
    version_max: int = 0
    version_active: int = 0
    isid: bytes = b"\0" * 6
    tsih: int = 0
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    status_class: int = 0
    status_detail: int = 0

    def encode_bhs(self) -> bytearray:
        flags = (0x80 if self.transit else 0) | (0x40 if self.cont else 0)
        flags |= (int(self.csg) << 2) | (int(self.nsg) if self.transit else 0)
        h = self._start(flags)
        h[2] = self.version_max
        h[3] = self.version_active
        h[8:14] = self.isid
        _put_u16(h, 14, self.tsih)
        _U32.pack_into(h, 24, self.statsn)
        _U32.pack_into(h, 28, self.expcmdsn)
        _U32.pack_into(h, 32, self.maxcmdsn)
        h[36] = self.status_class
        h[37] = self.status_detail
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> LoginResponse:
        flags = bhs[1]
        transit = bool(flags & 0x80)
        return cls(
            itt=_u32(bhs, 16), data=data, transit=transit, cont=bool(flags & 0x40),
            csg=_stage((flags >> 2) & 3), nsg=_stage(flags & 3) if transit else Stage.SECURITY,
            version_max=bhs[2], version_active=bhs[3], isid=bytes(bhs[8:14]),
            tsih=_u16(bhs, 14), statsn=_u32(bhs, 24), expcmdsn=_u32(bhs, 28),
            maxcmdsn=_u32(bhs, 32), status_class=bhs[36], status_detail=bhs[37],
        )


@dataclass(slots=True)
class TextResponse(PDU):
    opcode: ClassVar[Opcode] = Opcode.TEXT_RESPONSE
    final: bool = True
    cont: bool = False
    lun: int = 0
    ttt: int = RESERVED_TAG
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0

    def encode_bhs(self) -> bytearray:
        h = self._start((0x80 if self.final else 0) | (0x40 if self.cont else 0))
        _U64.pack_into(h, 8, self.lun)
        _U32.pack_into(h, 20, self.ttt)
        _U32.pack_into(h, 24, self.statsn)
        _U32.pack_into(h, 28, self.expcmdsn)
        _U32.pack_into(h, 32, self.maxcmdsn)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> TextResponse:
        return cls(
            itt=_u32(bhs, 16), data=data, final=bool(bhs[1] & 0x80), cont=bool(bhs[1] & 0x40),
            lun=_u64(bhs, 8), ttt=_u32(bhs, 20), statsn=_u32(bhs, 24), expcmdsn=_u32(bhs, 28),
            maxcmdsn=_u32(bhs, 32),
        )


@dataclass(slots=True)
class DataIn(PDU):
    opcode: ClassVar[Opcode] = Opcode.DATA_IN
    final: bool = True
    ack: bool = False
    has_status: bool = False
    status: int = 0
    lun: int = 0
    ttt: int = RESERVED_TAG
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    datasn: int = 0
    offset: int = 0
    residual_overflow: bool = False
    residual_underflow: bool = False
    residual_count: int = 0

    def encode_bhs(self) -> bytearray:
        flags = (0x80 if self.final else 0) | (0x40 if self.ack else 0)
        flags |= (0x04 if self.residual_overflow else 0) | (0x02 if self.residual_underflow else 0)
        flags |= 0x01 if self.has_status else 0
        h = self._start(flags)
        h[3] = self.status if self.has_status else 0
        _U64.pack_into(h, 8, self.lun)
        _U32.pack_into(h, 20, self.ttt)
        _U32.pack_into(h, 24, self.statsn if self.has_status else 0)
        _U32.pack_into(h, 28, self.expcmdsn)
        _U32.pack_into(h, 32, self.maxcmdsn)
        _U32.pack_into(h, 36, self.datasn)
        _U32.pack_into(h, 40, self.offset)
        _U32.pack_into(h, 44, self.residual_count)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> DataIn:
        f, status, lun, itt, ttt, statsn, expcmdsn, maxcmdsn, datasn, offset, residual = \
            _DATA_IN.unpack_from(bhs)
        if f & 0x01 and not f & 0x80:
            raise PDUFormatError("Data-In with S bit but without F bit",
                                 RejectReason.INVALID_PDU_FIELD)
        return cls(itt, data, bool(f & 0x80), bool(f & 0x40), bool(f & 0x01), status, lun, ttt,
                   statsn, expcmdsn, maxcmdsn, datasn, offset, bool(f & 0x04),
                   bool(f & 0x02), residual)


@dataclass(slots=True)
class LogoutResponse(PDU):
    opcode: ClassVar[Opcode] = Opcode.LOGOUT_RESPONSE
    response: int = LogoutResponseCode.SUCCESS
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    time2wait: int = 0
    time2retain: int = 0

    def encode_bhs(self) -> bytearray:
        h = self._start(0x80)
        h[2] = self.response
        _U32.pack_into(h, 24, self.statsn)
        _U32.pack_into(h, 28, self.expcmdsn)
        _U32.pack_into(h, 32, self.maxcmdsn)
        _put_u16(h, 40, self.time2wait)
        _put_u16(h, 42, self.time2retain)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> LogoutResponse:
        return cls(
            itt=_u32(bhs, 16), data=data, response=bhs[2], statsn=_u32(bhs, 24),
            expcmdsn=_u32(bhs, 28), maxcmdsn=_u32(bhs, 32), time2wait=_u16(bhs, 40),
            time2retain=_u16(bhs, 42),
        )


@dataclass(slots=True)
class R2T(PDU):
    opcode: ClassVar[Opcode] = Opcode.R2T
    lun: int = 0
    ttt: int = 0
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    r2tsn: int = 0
    offset: int = 0
    length: int = 0

    def encode_bhs(self) -> bytearray:
        h = self._start(0x80)
        _U64.pack_into(h, 8, self.lun)
        _U32.pack_into(h, 20, self.ttt)
        _U32.pack_into(h, 24, self.statsn)
        _U32.pack_into(h, 28, self.expcmdsn)
        _U32.pack_into(h, 32, self.maxcmdsn)
        _U32.pack_into(h, 36, self.r2tsn)
        _U32.pack_into(h, 40, self.offset)
        _U32.pack_into(h, 44, self.length)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> R2T:
        if len(data):
            raise PDUFormatError("R2T with a data segment", RejectReason.INVALID_PDU_FIELD)
        return cls(
            itt=_u32(bhs, 16), lun=_u64(bhs, 8), ttt=_u32(bhs, 20), statsn=_u32(bhs, 24),
            expcmdsn=_u32(bhs, 28), maxcmdsn=_u32(bhs, 32), r2tsn=_u32(bhs, 36),
            offset=_u32(bhs, 40), length=_u32(bhs, 44),
        )


@dataclass(slots=True)
class AsyncMessage(PDU):
    opcode: ClassVar[Opcode] = Opcode.ASYNC_MESSAGE
    lun: int = 0
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    event: int = 0
    vcode: int = 0
    parameter1: int = 0
    parameter2: int = 0
    parameter3: int = 0

    def encode_bhs(self) -> bytearray:
        h = self._start(0x80)
        _U64.pack_into(h, 8, self.lun)
        _U32.pack_into(h, 24, self.statsn)
        _U32.pack_into(h, 28, self.expcmdsn)
        _U32.pack_into(h, 32, self.maxcmdsn)
        h[36] = self.event
        h[37] = self.vcode
        _put_u16(h, 38, self.parameter1)
        _put_u16(h, 40, self.parameter2)
        _put_u16(h, 42, self.parameter3)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> AsyncMessage:
        return cls(
            itt=_u32(bhs, 16), data=data, lun=_u64(bhs, 8), statsn=_u32(bhs, 24),
            expcmdsn=_u32(bhs, 28), maxcmdsn=_u32(bhs, 32), event=bhs[36], vcode=bhs[37],
            parameter1=_u16(bhs, 38), parameter2=_u16(bhs, 40), parameter3=_u16(bhs, 42),
        )


@dataclass(slots=True)
class Reject(PDU):
    """Reject: ``data`` carries the header of the rejected PDU."""

    opcode: ClassVar[Opcode] = Opcode.REJECT
    reason: int = RejectReason.PROTOCOL_ERROR
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    datasn: int = 0

    def encode_bhs(self) -> bytearray:
        h = self._start(0x80)
        h[2] = self.reason
        _U32.pack_into(h, 24, self.statsn)
        _U32.pack_into(h, 28, self.expcmdsn)
        _U32.pack_into(h, 32, self.maxcmdsn)
        _U32.pack_into(h, 36, self.datasn)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> Reject:
        return cls(
            itt=_u32(bhs, 16), data=data, reason=bhs[2], statsn=_u32(bhs, 24),
            expcmdsn=_u32(bhs, 28), maxcmdsn=_u32(bhs, 32), datasn=_u32(bhs, 36),
        )

    @property
    def rejected_itt(self) -> int | None:
        """The ITT of the rejected PDU, when its header came back whole."""
        return _u32(self.data, 16) if len(self.data) >= BHS_LENGTH else None


# ---------------------------------------------------------------- dispatch

PDU_CLASSES: dict[int, type[PDU]] = {
    cls.opcode: cls
    for cls in (
        NopOut, SCSICommand, TaskManagementRequest, LoginRequest, TextRequest, DataOut,
        LogoutRequest, SNACKRequest, NopIn, SCSIResponse, TaskManagementResponse,
        LoginResponse, TextResponse, DataIn, LogoutResponse, R2T, AsyncMessage, Reject,
    )
}


def _stage(v: int) -> Stage:
    if v == 2:
        raise PDUFormatError("reserved login stage 2", RejectReason.INVALID_PDU_FIELD)
    return Stage(v)


def iter_ahs(ahs: Buffer) -> list[tuple[int, Buffer]]:
    """Split the AHS area into (type, type-specific bytes) pairs."""
    out: list[tuple[int, Buffer]] = []
    view = memoryview(ahs)
    pos = 0
    while pos < len(view):
        if len(view) - pos < 4:
            raise PDUFormatError("truncated AHS", RejectReason.INVALID_PDU_FIELD)
        length = (view[pos] << 8) | view[pos + 1]
        ahs_type = view[pos + 2]
        end = pos + 3 + length
        if length == 0 or end > len(view):
            raise PDUFormatError("AHS length runs past the header", RejectReason.INVALID_PDU_FIELD)
        out.append((ahs_type, view[pos + 3 : end]))
        pos = end + (-(length + 3) % 4)
    return out


def data_segment_length(bhs: Buffer) -> int:
    return (bhs[5] << 16) | (bhs[6] << 8) | bhs[7]


def ahs_length(bhs: Buffer) -> int:
    return bhs[4] * 4


def decode_pdu(bhs: Buffer, ahs: Buffer = b"", data: Buffer = b"") -> PDU:
    """Decode one PDU from its parts (digests and padding already stripped)."""
    if len(bhs) != BHS_LENGTH:
        raise PDUFormatError(f"BHS must be {BHS_LENGTH} bytes, got {len(bhs)}")
    op = bhs[0] & 0x3F
    cls = PDU_CLASSES.get(op)
    if cls is None:
        raise PDUFormatError(f"unknown opcode 0x{op:02x}", RejectReason.COMMAND_NOT_SUPPORTED)
    if len(data) != data_segment_length(bhs):
        raise PDUFormatError("data segment length does not match the header")
    if len(ahs) != ahs_length(bhs):
        raise PDUFormatError("AHS length does not match the header")
    try:
        return cls.decode(bhs, ahs, data)
    except (ValueError, struct.error) as exc:
        raise PDUFormatError(f"malformed {cls.__name__}: {exc}",
                             RejectReason.INVALID_PDU_FIELD) from exc


def encode_pdu(pdu: PDU) -> bytes:
    """Whole PDU as one bytes object (no digests); for tests and small PDUs."""
    bhs = pdu.encode_bhs()
    data = bytes(pdu.data)
    return bytes(bhs) + pdu.ahs + data + b"\0" * (-len(data) % 4)

