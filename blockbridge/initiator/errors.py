"""Errors of the initiator, each with a message meant for the user."""

from __future__ import annotations

from blockbridge.scsi.constants import SPACE_ALLOCATION_FAILED_WRITE_PROTECT, SenseKey, Status
from blockbridge.scsi.sense import SenseData, parse_sense


class InitiatorError(Exception):
    """Base class: ``str()`` is one line a user can act on."""


class ConnectError(InitiatorError):
    pass


class ConnectionLost(InitiatorError):
    pass


class LunRemoved(InitiatorError):
    """The LUN was removed from the target; its block device refuses all I/O."""


class SCSIError(InitiatorError):
    def __init__(self, status: int, sense: bytes, what: str = "command") -> None:
        self.status = status
        self.sense_data: SenseData | None = parse_sense(sense) if sense else None
        if status == Status.CHECK_CONDITION and self.sense_data is not None:
            text = self.sense_data.description
        else:
            try:
                text = Status(status).name.replace("_", " ").lower()
            except ValueError:
                text = f"status 0x{status:02x}"
        super().__init__(f"{what} failed: {text}")

    @property
    def key(self) -> int | None:
        return self.sense_data.key if self.sense_data else None

    @property
    def write_protected(self) -> bool:
        return self.key == SenseKey.DATA_PROTECT

    @property
    def out_of_space(self) -> bool:
        """A thin LUN whose storage is full (SPACE ALLOCATION FAILED WRITE PROTECT)."""
        d = self.sense_data
        return d is not None and d.key == SenseKey.DATA_PROTECT \
            and (d.asc, d.ascq) == SPACE_ALLOCATION_FAILED_WRITE_PROTECT

    @property
    def unit_attention(self) -> bool:
        return self.key == SenseKey.UNIT_ATTENTION
