"""The one place where initiator failures become errno values for the kernel."""

from __future__ import annotations

import errno
import logging

from blockbridge.initiator.errors import ConnectionLost, InitiatorError, SCSIError
from blockbridge.scsi.constants import SenseKey, Status

log = logging.getLogger(__name__)


def to_errno(exc: BaseException) -> int:
    if isinstance(exc, SCSIError):
        if exc.out_of_space:
            return errno.ENOSPC
        if exc.write_protected:
            return errno.EROFS
        if exc.status == Status.RESERVATION_CONFLICT:
            return errno.EBUSY
        if exc.key == SenseKey.ILLEGAL_REQUEST:
            return errno.EINVAL
        if exc.key == SenseKey.NOT_READY:
            return errno.EAGAIN
        return errno.EIO
    if isinstance(exc, ConnectionLost):
        return errno.EIO
    if isinstance(exc, InitiatorError):
        return errno.EIO
    return errno.EIO
