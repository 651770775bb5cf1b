"""The iSCSI PDU codec: one dataclass per opcode, 48-byte BHS in and out.

``encode_bhs()`` returns the 48-byte Basic Header Segment (the data segment length
is filled in from ``data``); ``decode(bhs, ahs, data)`` builds the dataclass back and
raises :class:`PDUFormatError` for anything malformed.  Framing (AHS, padding and
digests on a byte stream) lives in :mod:`blockbridge.iscsi.framing`.

The PDUs are defined in :mod:`.requests` (initiator to target) and :mod:`.responses`
(target to initiator) on the base of :mod:`.bhs`; this module names them all and
dispatches on the opcode.

PDUs are values: nobody changes one after it is made (derive a new one with
``dataclasses.replace``).  They are not declared frozen because a frozen dataclass costs
about five times as much to construct, and every command makes two or three of them.
"""

from __future__ import annotations

import struct

from .bhs import (
    MAX_DATA_SEGMENT,
    PDU,
    Buffer,
    ahs_length,
    data_segment_length,
    decode_lun,
    encode_lun,
    iter_ahs,
)
from .constants import BHS_LENGTH, RejectReason
from .errors import PDUFormatError
from .requests import (
    DataOut,
    LoginRequest,
    LogoutRequest,
    NopOut,
    SCSICommand,
    SNACKRequest,
    TaskManagementRequest,
    TextRequest,
)
from .responses import (
    R2T,
    AsyncMessage,
    DataIn,
    LoginResponse,
    LogoutResponse,
    NopIn,
    Reject,
    SCSIResponse,
    TaskManagementResponse,
    TextResponse,
)

__all__ = [
    "MAX_DATA_SEGMENT",
    "PDU",
    "PDU_CLASSES",
    "R2T",
    "AsyncMessage",
    "Buffer",
    "DataIn",
    "DataOut",
    "LoginRequest",
    "LoginResponse",
    "LogoutRequest",
    "LogoutResponse",
    "NopIn",
    "NopOut",
    "Reject",
    "SCSICommand",
    "SCSIResponse",
    "SNACKRequest",
    "TaskManagementRequest",
    "TaskManagementResponse",
    "TextRequest",
    "TextResponse",
    "ahs_length",
    "data_segment_length",
    "decode_lun",
    "decode_pdu",
    "encode_lun",
    "encode_pdu",
    "iter_ahs",
]

PDU_CLASSES: dict[int, type[PDU]] = {
    cls.opcode: cls
    for cls in (
        NopOut, SCSICommand, TaskManagementRequest, LoginRequest, TextRequest, DataOut,
        LogoutRequest, SNACKRequest, NopIn, SCSIResponse, TaskManagementResponse,
        LoginResponse, TextResponse, DataIn, LogoutResponse, R2T, AsyncMessage, Reject,
    )
}


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
