"""The PDUs a target sends (RFC 7143 section 11, opcodes 0x20-0x3f)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from .bhs import (
    PDU,
    U32,
    U64,
    Buffer,
    login_stage,
    put_u16,
    u16,
    u32,
    u64,
)
from .constants import (
    BHS_LENGTH,
    RESERVED_TAG,
    LogoutResponseCode,
    Opcode,
    RejectReason,
    ServiceResponse,
    Stage,
    TaskResponse,
)
from .errors import PDUFormatError

# Whole headers of the PDUs that arrive most, unpacked in one call.
_DATA_IN = struct.Struct(">xBxB4xQIIIIIIII")  # flags, status, LUN, ITT, TTT .. residual
_SCSI_RESPONSE = struct.Struct(">xBBB12xIIIIIIII")  # flags, response, status, ITT ..


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
        U64.pack_into(h, 8, self.lun)
        U32.pack_into(h, 20, self.ttt)
        U32.pack_into(h, 24, self.statsn)
        U32.pack_into(h, 28, self.expcmdsn)
        U32.pack_into(h, 32, self.maxcmdsn)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> NopIn:
        return cls(
            itt=u32(bhs, 16), data=data, ttt=u32(bhs, 20), lun=u64(bhs, 8),
            statsn=u32(bhs, 24), expcmdsn=u32(bhs, 28), maxcmdsn=u32(bhs, 32),
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
        U32.pack_into(h, 20, self.snack_tag)
        U32.pack_into(h, 24, self.statsn)
        U32.pack_into(h, 28, self.expcmdsn)
        U32.pack_into(h, 32, self.maxcmdsn)
        U32.pack_into(h, 36, self.expdatasn)
        U32.pack_into(h, 40, self.bidi_residual_count)
        U32.pack_into(h, 44, self.residual_count)
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
        U32.pack_into(h, 24, self.statsn)
        U32.pack_into(h, 28, self.expcmdsn)
        U32.pack_into(h, 32, self.maxcmdsn)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> TaskManagementResponse:
        return cls(
            itt=u32(bhs, 16), data=data, response=bhs[2], statsn=u32(bhs, 24),
            expcmdsn=u32(bhs, 28), maxcmdsn=u32(bhs, 32),
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
        put_u16(h, 14, self.tsih)
        U32.pack_into(h, 24, self.statsn)
        U32.pack_into(h, 28, self.expcmdsn)
        U32.pack_into(h, 32, self.maxcmdsn)
        h[36] = self.status_class
        h[37] = self.status_detail
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> LoginResponse:
        flags = bhs[1]
        transit = bool(flags & 0x80)
        return cls(
            itt=u32(bhs, 16), data=data, transit=transit, cont=bool(flags & 0x40),
            csg=login_stage((flags >> 2) & 3),
            nsg=login_stage(flags & 3) if transit else Stage.SECURITY,
            version_max=bhs[2], version_active=bhs[3], isid=bytes(bhs[8:14]),
            tsih=u16(bhs, 14), statsn=u32(bhs, 24), expcmdsn=u32(bhs, 28),
            maxcmdsn=u32(bhs, 32), status_class=bhs[36], status_detail=bhs[37],
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
        U64.pack_into(h, 8, self.lun)
        U32.pack_into(h, 20, self.ttt)
        U32.pack_into(h, 24, self.statsn)
        U32.pack_into(h, 28, self.expcmdsn)
        U32.pack_into(h, 32, self.maxcmdsn)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> TextResponse:
        return cls(
            itt=u32(bhs, 16), data=data, final=bool(bhs[1] & 0x80), cont=bool(bhs[1] & 0x40),
            lun=u64(bhs, 8), ttt=u32(bhs, 20), statsn=u32(bhs, 24), expcmdsn=u32(bhs, 28),
            maxcmdsn=u32(bhs, 32),
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
        U64.pack_into(h, 8, self.lun)
        U32.pack_into(h, 20, self.ttt)
        U32.pack_into(h, 24, self.statsn if self.has_status else 0)
        U32.pack_into(h, 28, self.expcmdsn)
        U32.pack_into(h, 32, self.maxcmdsn)
        U32.pack_into(h, 36, self.datasn)
        U32.pack_into(h, 40, self.offset)
        U32.pack_into(h, 44, self.residual_count)
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
        U32.pack_into(h, 24, self.statsn)
        U32.pack_into(h, 28, self.expcmdsn)
        U32.pack_into(h, 32, self.maxcmdsn)
        put_u16(h, 40, self.time2wait)
        put_u16(h, 42, self.time2retain)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> LogoutResponse:
        return cls(
            itt=u32(bhs, 16), data=data, response=bhs[2], statsn=u32(bhs, 24),
            expcmdsn=u32(bhs, 28), maxcmdsn=u32(bhs, 32), time2wait=u16(bhs, 40),
            time2retain=u16(bhs, 42),
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
        U64.pack_into(h, 8, self.lun)
        U32.pack_into(h, 20, self.ttt)
        U32.pack_into(h, 24, self.statsn)
        U32.pack_into(h, 28, self.expcmdsn)
        U32.pack_into(h, 32, self.maxcmdsn)
        U32.pack_into(h, 36, self.r2tsn)
        U32.pack_into(h, 40, self.offset)
        U32.pack_into(h, 44, self.length)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> R2T:
        if len(data):
            raise PDUFormatError("R2T with a data segment", RejectReason.INVALID_PDU_FIELD)
        return cls(
            itt=u32(bhs, 16), lun=u64(bhs, 8), ttt=u32(bhs, 20), statsn=u32(bhs, 24),
            expcmdsn=u32(bhs, 28), maxcmdsn=u32(bhs, 32), r2tsn=u32(bhs, 36),
            offset=u32(bhs, 40), length=u32(bhs, 44),
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
        U64.pack_into(h, 8, self.lun)
        U32.pack_into(h, 24, self.statsn)
        U32.pack_into(h, 28, self.expcmdsn)
        U32.pack_into(h, 32, self.maxcmdsn)
        h[36] = self.event
        h[37] = self.vcode
        put_u16(h, 38, self.parameter1)
        put_u16(h, 40, self.parameter2)
        put_u16(h, 42, self.parameter3)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> AsyncMessage:
        return cls(
            itt=u32(bhs, 16), data=data, lun=u64(bhs, 8), statsn=u32(bhs, 24),
            expcmdsn=u32(bhs, 28), maxcmdsn=u32(bhs, 32), event=bhs[36], vcode=bhs[37],
            parameter1=u16(bhs, 38), parameter2=u16(bhs, 40), parameter3=u16(bhs, 42),
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
        U32.pack_into(h, 24, self.statsn)
        U32.pack_into(h, 28, self.expcmdsn)
        U32.pack_into(h, 32, self.maxcmdsn)
        U32.pack_into(h, 36, self.datasn)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> Reject:
        return cls(
            itt=u32(bhs, 16), data=data, reason=bhs[2], statsn=u32(bhs, 24),
            expcmdsn=u32(bhs, 28), maxcmdsn=u32(bhs, 32), datasn=u32(bhs, 36),
        )

    @property
    def rejected_itt(self) -> int | None:
        """The ITT of the rejected PDU, when its header came back whole."""
        return u32(self.data, 16) if len(self.data) >= BHS_LENGTH else None
