"""The parts every iSCSI PDU shares: the base class, the 48-byte header's fields, AHS.

The PDUs themselves are in :mod:`.requests` (initiator to target) and :mod:`.responses`
(target to initiator); :mod:`.pdu` is the codec's one entry point.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from .constants import (
    BHS_LENGTH,
    RESERVED_TAG,
    Opcode,
    RejectReason,
    Stage,
)
from .errors import PDUFormatError

Buffer: TypeAlias = bytes | bytearray | memoryview

MAX_DATA_SEGMENT = (1 << 24) - 1

U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")


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


def data_len(data: Buffer) -> int:
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
        n = data_len(self.data)
        h[5] = (n >> 16) & 0xFF
        h[6] = (n >> 8) & 0xFF
        h[7] = n & 0xFF
        U32.pack_into(h, 16, self.itt)
        return h

    @property
    def ahs(self) -> bytes:
        """Additional header segments, already padded to 4 bytes each."""
        return b""


def u32(b: Buffer, off: int) -> int:
    return int(U32.unpack_from(b, off)[0])


def u64(b: Buffer, off: int) -> int:
    return int(U64.unpack_from(b, off)[0])


def u16(b: Buffer, off: int) -> int:
    return (b[off] << 8) | b[off + 1]


def put_u16(h: bytearray, off: int, v: int) -> None:
    h[off] = (v >> 8) & 0xFF
    h[off + 1] = v & 0xFF


def login_stage(v: int) -> Stage:
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
