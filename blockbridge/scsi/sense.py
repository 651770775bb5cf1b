"""Sense data: build fixed or descriptor format, parse either into one typed value."""

from __future__ import annotations

from dataclasses import dataclass

from . import constants as c
from .constants import SenseKey

_ASC_TEXT = {
    c.NO_ADDITIONAL_SENSE: "no additional sense information",
    c.LOGICAL_UNIT_NOT_READY: "logical unit not ready",
    c.LOGICAL_UNIT_COMMUNICATION_FAILURE: "logical unit communication failure",
    c.WRITE_ERROR: "write error",
    c.UNRECOVERED_READ_ERROR: "unrecovered read error",
    c.PARAMETER_LIST_LENGTH_ERROR: "parameter list length error",
    c.MISCOMPARE_DURING_VERIFY: "miscompare during verify operation",
    c.INVALID_COMMAND_OPERATION_CODE: "invalid command operation code",
    c.LBA_OUT_OF_RANGE: "logical block address out of range",
    c.INVALID_FIELD_IN_CDB: "invalid field in CDB",
    c.LOGICAL_UNIT_NOT_SUPPORTED: "logical unit not supported",
    c.INVALID_FIELD_IN_PARAMETER_LIST: "invalid field in parameter list",
    c.WRITE_PROTECTED: "write protected",
    c.SPACE_ALLOCATION_FAILED_WRITE_PROTECT:
        "space allocation failed (the target's storage is full)",
    c.POWER_ON_RESET: "power on, reset, or bus device reset occurred",
    c.BUS_DEVICE_RESET: "bus device reset function occurred",
    c.MODE_PARAMETERS_CHANGED: "mode parameters changed",
    c.RESERVATIONS_PREEMPTED: "reservations preempted",
    c.RESERVATIONS_RELEASED: "reservations released",
    c.REGISTRATIONS_PREEMPTED: "registrations preempted",
    c.CAPACITY_DATA_HAS_CHANGED: "capacity data has changed",
    c.REPORTED_LUNS_DATA_HAS_CHANGED: "reported luns data has changed",
    c.MEDIUM_NOT_PRESENT: "medium not present",
    c.INTERNAL_TARGET_FAILURE: "internal target failure",
}


@dataclass(frozen=True)
class SenseData:
    key: int
    asc: int
    ascq: int
    information: int | None = None
    descriptor_format: bool = False

    @property
    def description(self) -> str:
        try:
            key = SenseKey(self.key).name.replace("_", " ").lower()
        except ValueError:
            key = f"sense key 0x{self.key:x}"
        text = _ASC_TEXT.get((self.asc, self.ascq), f"asc/ascq 0x{self.asc:02x}/0x{self.ascq:02x}")
        return f"{key}: {text}"


def build_sense(
    key: int,
    asc_ascq: tuple[int, int],
    *,
    information: int | None = None,
    field_pointer: int | None = None,
    bit_pointer: int | None = None,
    in_cdb: bool = True,
    descriptor: bool = False,
) -> bytes:
    """Sense data for CHECK CONDITION; fixed format unless ``descriptor`` (D_SENSE) is set."""
    asc, ascq = asc_ascq
    sks = b""
    if field_pointer is not None:
        b0 = 0x80 | (0x40 if in_cdb else 0)
        if bit_pointer is not None:
            b0 |= 0x08 | (bit_pointer & 7)
        sks = bytes([b0, (field_pointer >> 8) & 0xFF, field_pointer & 0xFF])
    if descriptor:
        descs = b""
        if information is not None:
            descs += bytes([0x00, 0x0A, 0x80, 0]) + information.to_bytes(8, "big")
        if sks:
            descs += bytes([0x02, 0x06, 0, 0]) + sks + b"\0"
        return bytes([0x72, key & 0xF, asc, ascq, 0, 0, 0, len(descs)]) + descs
    out = bytearray(18)
    out[0] = 0x70 | (0x80 if information is not None else 0)
    out[2] = key & 0xF
    if information is not None:
        out[3:7] = (information & 0xFFFFFFFF).to_bytes(4, "big")
    out[7] = 10
    out[12], out[13] = asc, ascq
    if sks:
        out[15:18] = sks
    return bytes(out)


class CheckCondition(Exception):
    """A command ends with CHECK CONDITION: the one exception for it, target-wide.

    ``sense`` builds its sense data (through :func:`build_sense`, the one builder), in
    descriptor format when the unit's D_SENSE bit asks for it."""

    def __init__(
        self, key: int, asc_ascq: tuple[int, int], *, information: int | None = None,
        field_pointer: int | None = None, in_cdb: bool = True,
    ) -> None:
        super().__init__(key, asc_ascq)
        self.key, self.asc_ascq, self.information = key, asc_ascq, information
        self.field_pointer, self.in_cdb = field_pointer, in_cdb

    def sense(self, descriptor: bool = False) -> bytes:
        return build_sense(self.key, self.asc_ascq, information=self.information,
                           field_pointer=self.field_pointer, in_cdb=self.in_cdb,
                           descriptor=descriptor)


def invalid_field_in_cdb(byte: int | None = None) -> CheckCondition:
    """ILLEGAL REQUEST, INVALID FIELD IN CDB, pointing at ``byte`` where known."""
    return CheckCondition(SenseKey.ILLEGAL_REQUEST, c.INVALID_FIELD_IN_CDB, field_pointer=byte)


def illegal_request(asc_ascq: tuple[int, int], *, in_cdb: bool = True) -> CheckCondition:
    """ILLEGAL REQUEST with ``asc_ascq``."""
    return CheckCondition(SenseKey.ILLEGAL_REQUEST, asc_ascq, in_cdb=in_cdb)


def parse_sense(data: bytes) -> SenseData | None:
    """Parse fixed (0x70/0x71) or descriptor (0x72/0x73) sense; None if unusable."""
    if len(data) < 1:
        return None
    code = data[0] & 0x7F
    if code in (0x70, 0x71) and len(data) >= 14:
        info = int.from_bytes(data[3:7], "big") if data[0] & 0x80 else None
        return SenseData(data[2] & 0xF, data[12], data[13], info)
    if code in (0x72, 0x73) and len(data) >= 4:
        info = None
        pos = 8
        while pos + 2 <= len(data):
            dtype, dlen = data[pos], data[pos + 1]
            if dtype == 0 and dlen >= 10 and pos + 12 <= len(data):
                info = int.from_bytes(data[pos + 4 : pos + 12], "big")
            pos += 2 + dlen
        return SenseData(data[1] & 0xF, data[2], data[3], info, descriptor_format=True)
    return None
