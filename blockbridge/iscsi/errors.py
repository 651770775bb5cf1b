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


class ProtocolError(ISCSIError):
    """The peer broke a rule of the full-feature phase; the connection ends.  ``reason`` is
    the Reject reason that names the fault; ``reject`` says whether a Reject goes out
    before the connection is closed (otherwise it is closed at once)."""

    def __init__(self, message: str, reason: RejectReason = RejectReason.PROTOCOL_ERROR,
                 *, reject: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.reject = reject


class MachineStopped(ISCSIError):
    """A connection machine was called after it stopped (an error, or the logout)."""
