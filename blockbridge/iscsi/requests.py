"""The PDUs an initiator sends (RFC 7143 section 11, opcodes 0x00-0x1f)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from .bhs import (
    PDU,
    U32,
    U64,
    Buffer,
    data_len,
    iter_ahs,
    login_stage,
    put_u16,
    u16,
    u32,
    u64,
)
from .constants import (
    BHS_LENGTH,
    RESERVED_TAG,
    AhsType,
    Opcode,
    Stage,
    TaskAttribute,
)

# The whole header of the PDU that arrives most, unpacked in one call.
_SCSI_COMMAND = struct.Struct(">BBxxIQIIII16s")  # opcode, flags, length, LUN, ITT .. CDB


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
        U64.pack_into(h, 8, self.lun)
        U32.pack_into(h, 20, self.ttt)
        U32.pack_into(h, 24, self.cmdsn)
        U32.pack_into(h, 28, self.expstatsn)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> NopOut:
        return cls(
            itt=u32(bhs, 16), data=data, ttt=u32(bhs, 20), lun=u64(bhs, 8),
            cmdsn=u32(bhs, 24), expstatsn=u32(bhs, 28), immediate=bool(bhs[0] & 0x40),
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
                data_len(self.data), self.lun, self.itt, self.expected_length, self.cmdsn,
                self.expstatsn, cdb)
            return h
        if len(cdb) - 16 > 1020:
            raise ValueError("CDB too long")
        h = self._start(flags, self.immediate)
        ahs = self.ahs
        h[4] = len(ahs) // 4
        U64.pack_into(h, 8, self.lun)
        U32.pack_into(h, 20, self.expected_length)
        U32.pack_into(h, 24, self.cmdsn)
        U32.pack_into(h, 28, self.expstatsn)
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
                bidi = u32(value, 1)
        flags = bhs[1]
        return cls(
            itt=u32(bhs, 16), data=data, lun=u64(bhs, 8), cdb=cdb,
            expected_length=u32(bhs, 20), cmdsn=u32(bhs, 24), expstatsn=u32(bhs, 28),
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
        U64.pack_into(h, 8, self.lun)
        U32.pack_into(h, 20, self.referenced_itt)
        U32.pack_into(h, 24, self.cmdsn)
        U32.pack_into(h, 28, self.expstatsn)
        U32.pack_into(h, 32, self.refcmdsn)
        U32.pack_into(h, 36, self.expdatasn)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> TaskManagementRequest:
        return cls(
            itt=u32(bhs, 16), data=data, function=bhs[1] & 0x7F, lun=u64(bhs, 8),
            referenced_itt=u32(bhs, 20), cmdsn=u32(bhs, 24), expstatsn=u32(bhs, 28),
            refcmdsn=u32(bhs, 32), expdatasn=u32(bhs, 36), immediate=bool(bhs[0] & 0x40),
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
        put_u16(h, 14, self.tsih)
        put_u16(h, 20, self.cid)
        U32.pack_into(h, 24, self.cmdsn)
        U32.pack_into(h, 28, self.expstatsn)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> LoginRequest:
        flags = bhs[1]
        transit = bool(flags & 0x80)
        return cls(
            itt=u32(bhs, 16), data=data, transit=transit, cont=bool(flags & 0x40),
            csg=login_stage((flags >> 2) & 3),
            nsg=login_stage(flags & 3) if transit else Stage.SECURITY,
            version_max=bhs[2], version_min=bhs[3], isid=bytes(bhs[8:14]), tsih=u16(bhs, 14),
            cid=u16(bhs, 20), cmdsn=u32(bhs, 24), expstatsn=u32(bhs, 28),
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
        U64.pack_into(h, 8, self.lun)
        U32.pack_into(h, 20, self.ttt)
        U32.pack_into(h, 24, self.cmdsn)
        U32.pack_into(h, 28, self.expstatsn)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> TextRequest:
        return cls(
            itt=u32(bhs, 16), data=data, final=bool(bhs[1] & 0x80), cont=bool(bhs[1] & 0x40),
            lun=u64(bhs, 8), ttt=u32(bhs, 20), cmdsn=u32(bhs, 24), expstatsn=u32(bhs, 28),
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
        U64.pack_into(h, 8, self.lun)
        U32.pack_into(h, 20, self.ttt)
        U32.pack_into(h, 28, self.expstatsn)
        U32.pack_into(h, 36, self.datasn)
        U32.pack_into(h, 40, self.offset)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> DataOut:
        return cls(
            itt=u32(bhs, 16), data=data, final=bool(bhs[1] & 0x80), lun=u64(bhs, 8),
            ttt=u32(bhs, 20), expstatsn=u32(bhs, 28), datasn=u32(bhs, 36),
            offset=u32(bhs, 40),
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
        put_u16(h, 20, self.cid)
        U32.pack_into(h, 24, self.cmdsn)
        U32.pack_into(h, 28, self.expstatsn)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> LogoutRequest:
        return cls(
            itt=u32(bhs, 16), data=data, reason=bhs[1] & 0x7F, cid=u16(bhs, 20),
            cmdsn=u32(bhs, 24), expstatsn=u32(bhs, 28), immediate=bool(bhs[0] & 0x40),
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
        U64.pack_into(h, 8, self.lun)
        U32.pack_into(h, 20, self.ttt)
        U32.pack_into(h, 28, self.expstatsn)
        U32.pack_into(h, 40, self.begrun)
        U32.pack_into(h, 44, self.runlength)
        return h

    @classmethod
    def decode(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> SNACKRequest:
        return cls(
            itt=u32(bhs, 16), data=data, snack_type=bhs[1] & 0x0F, lun=u64(bhs, 8),
            ttt=u32(bhs, 20), expstatsn=u32(bhs, 28), begrun=u32(bhs, 40),
            runlength=u32(bhs, 44),
        )
