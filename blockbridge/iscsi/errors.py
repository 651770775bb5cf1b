"""Typed errors raised by the sans-IO iSCSI core."""

from __future__ import annotations

from .constants import LoginStatus, RejectReason


class ISCSIError(Exception):
    """Base class of every error the protocol core raises."""


class PDUFormatError(ISCSIError):
    """Bytes that do not form a valid PDU.  ``reason`` is what a target sends back in a Reject."""

    def __init__(self, message: str, reason: RejectReason = RejectReason.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.reason = reason


class DigestError(PDUFormatError):
    """A header or data digest did not match."""

    def __init__(self, message: str, *, header: bool) -> None:
        super().__init__(
            message,
            RejectReason.PROTOCOL_ERROR if header else RejectReason.DATA_DIGEST_ERROR,
        )
        self.header = header


class NegotiationError(ISCSIError):
    """A key=value negotiation that cannot succeed; ``status`` is the login status to report."""

    def __init__(self, message: str, status: LoginStatus = LoginStatus.INITIATOR_ERROR) -> None:
        super().__init__(message)
        self.status = status


class LoginFailed(ISCSIError):
    """The login was refused by the peer (initiator side) or by us (target side)."""

    def __init__(self, message: str, status: LoginStatus) -> None:
        super().__init__(message)
        self.status = status


class AuthenticationError(LoginFailed):
    def __init__(self, message: str) -> None:
        super().__init__(message, LoginStatus.AUTHENTICATION_FAILURE)
