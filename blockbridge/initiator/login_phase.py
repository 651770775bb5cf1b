"""The initiator's login phase: connect (TCP, or TLS), run the login machine, and hand
the stream and what was negotiated to the session."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

import trio

from blockbridge.iscsi import chap
from blockbridge.iscsi import pdu as P
from blockbridge.iscsi.errors import LoginFailed
from blockbridge.iscsi.initiator_login import InitiatorLogin
from blockbridge.iscsi.login import ChapCredentials
from blockbridge.tls import ClientTLS, TLSError
from blockbridge.transport import ConnectionClosed, PDUStream, open_tcp

from .errors import ConnectError

log = logging.getLogger("blockbridge.initiator.session")
LOGIN_TIMEOUT = 15.0


class _AlgorithmRefused(Exception):
    """The target refused our CHAP_A list."""


def _may_retry_md5(algorithms: tuple[int, ...]) -> bool:
    return len(algorithms) > 1 and 5 in algorithms


def _reason(exc: BaseException) -> str:
    """The underlying socket error of a failed connect, in plain words."""
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    cause = exc.__cause__
    inner = getattr(cause, "exceptions", None)
    if inner:
        exc = inner[0]
    if isinstance(exc, socket.gaierror):
        if exc.errno in _NOT_FOUND:
            return "host name not found"
        if exc.errno == socket.EAI_AGAIN:
            return ("no answer from the DNS server (check the network and /etc/resolv.conf, "
                    "or use an address)")
        return f"cannot resolve the host name: {exc.strerror}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno)
    return str(exc)


# getaddrinfo's answers for a name that does not exist (EAI_NODATA: no address for it)
_NOT_FOUND = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


async def log_in(
    host: str,
    port: int,
    *,
    initiator_name: str,
    target_name: str | None,
    credentials: ChapCredentials | None = None,
    target_credentials: ChapCredentials | None = None,
    proposals: Mapping[str, str] | None = None,
    isid: bytes | None = None,
    chap_algorithms: tuple[int, ...] = chap.DEFAULT_PREFERENCE,
    tls: ClientTLS | None = None,
) -> tuple[PDUStream, InitiatorLogin, str]:
    """Connect and log in: the stream, ready for the full-feature phase, the login
    machine (with what was negotiated) and the portal.  If the target refuses our list
    of CHAP algorithms, retry once with MD5 alone (some targets reject lists, as
    open-iscsi 2.1.0 users found), unless MD5 is not in the list."""
    try:
        return await _connect(host, port, initiator_name, target_name, credentials,
                                  target_credentials, proposals, isid, chap_algorithms,
                                  tls)
    except _AlgorithmRefused:
        log.info("%s:%d refused CHAP_A=%s; retrying with MD5 only", host, port,
                 ",".join(map(str, chap_algorithms)))
        return await _connect(host, port, initiator_name, target_name, credentials,
                                  target_credentials, proposals, isid, (chap.MD5,),
                                  tls)

async def _connect(
    host: str, port: int, initiator_name: str, target_name: str | None,
    credentials: ChapCredentials | None, target_credentials: ChapCredentials | None,
    proposals: Mapping[str, str] | None, isid: bytes | None,
    chap_algorithms: tuple[int, ...], tls: ClientTLS | None,
) -> tuple[PDUStream, InitiatorLogin, str]:
    portal = f"{host}:{port}"
    try:
        stream = await open_tcp(host, port, tls=tls)
    except (OSError, trio.TooSlowError) as exc:
        raise ConnectError(f"cannot connect to {portal}: {_reason(exc)}") from None
    except TLSError as exc:
        raise ConnectError(str(exc)) from None
    isid = isid or bytes([0x80]) + os.urandom(3) + b"\0\0"
    login = InitiatorLogin(initiator_name=initiator_name, target_name=target_name,
                           isid=isid, credentials=credentials,
                           target_credentials=target_credentials, proposals=proposals,
                           chap_algorithms=chap_algorithms, random_bytes=os.urandom)
    try:
        with trio.fail_after(LOGIN_TIMEOUT):
            req: P.LoginRequest | None = login.start(cmdsn=1, itt=0)
            while req is not None:
                await stream.send_pdu(req)
                rsp = await stream.receive_pdu()
                if not isinstance(rsp, P.LoginResponse):
                    raise ConnectError(f"{portal} sent {type(rsp).__name__} during login")
                req = login.receive(rsp)
    except trio.TooSlowError:
        await stream.aclose()
        raise ConnectError(f"login to {portal} timed out") from None
    except ConnectionClosed:
        await stream.aclose()
        if login.negotiating_algorithm and _may_retry_md5(chap_algorithms):
            raise _AlgorithmRefused() from None
        hint = "" if tls else " (if it is a TLS portal, add --tls)"
        raise ConnectError(f"{portal} closed the connection during login{hint}") from None
    except LoginFailed:
        await stream.aclose()
        if login.negotiating_algorithm and _may_retry_md5(chap_algorithms):
            raise _AlgorithmRefused() from None
        raise
    except BaseException:
        await stream.aclose()
        raise
    stream.header_digest = login.params.header_digest
    stream.data_digest = login.params.data_digest
    stream.max_data_segment_length = max(login.params.max_recv_data_segment_length, 8192)
    return stream, login, portal

