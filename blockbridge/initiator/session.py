"""A trio iSCSI session (one connection, ERL 0): login, then many commands in flight.

``Session.connect()`` logs in; ``run()`` is the reader task, started in the caller's
nursery; ``command()`` sends one SCSI command and waits for its status, answering R2Ts
and reassembling Data-In on the way.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

import trio

from blockbridge.iscsi import chap
from blockbridge.iscsi import pdu as P
from blockbridge.iscsi.constants import RESERVED_TAG, AsyncEvent, LogoutReason, Opcode, name_of
from blockbridge.iscsi.errors import LoginFailed
from blockbridge.iscsi.login import ChapCredentials, InitiatorLogin
from blockbridge.iscsi.params import SessionParams
from blockbridge.iscsi.pdu import Buffer
from blockbridge.iscsi.serial import sn_add, sn_le, sn_lt
from blockbridge.iscsi.text import decode_text, encode_text
from blockbridge.tls import ClientTLS, TLSError
from blockbridge.transport import ConnectionClosed, PDUStream, open_tcp

from .errors import ConnectError, ConnectionLost

log = logging.getLogger(__name__)
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


@dataclass
class Response:
    status: int
    sense: bytes = b""
    data: bytearray = field(default_factory=bytearray)
    received: int = 0
    residual: int = 0
    overflow: bool = False
    underflow: bool = False


@dataclass
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    response: Response | None = None
    buffer: bytearray | None = None
    received: int = 0
    data_out: memoryview | None = None
    lun: int = 0
    pdu: P.PDU | None = None
    error: str | None = None


class Session:
    def __init__(self, stream: PDUStream, login: InitiatorLogin, portal: str) -> None:
        self.stream = stream
        self.params: SessionParams = login.params
        self.portal = portal
        self.target_name = login.target_name
        self.tsih = login.tsih
        self.isid = login.isid
        self.cmdsn = login.cmdsn
        self.expcmdsn = login.expcmdsn
        self.maxcmdsn = login.maxcmdsn
        self.expstatsn = sn_add(login.statsn, 1)
        self._itt = 1
        self._pending: dict[int, _Pending] = {}
        stream.placement = self._place_data_in
        self._window_opened: trio.Event | None = None  # set when MaxCmdSN may have moved
        self._closed: str | None = None
        self.stats = {"commands": 0, "bytes_in": 0, "bytes_out": 0}

    # ---------------------------------------------------------------- login

    @classmethod
    async def connect(
        cls,
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
    ) -> Session:
        """Connect and log in.  If the target refuses our list of CHAP algorithms, retry
        once with MD5 alone (some targets reject lists, as open-iscsi 2.1.0 users found),
        unless MD5 is not in the list."""
        try:
            return await cls._connect(host, port, initiator_name, target_name, credentials,
                                      target_credentials, proposals, isid, chap_algorithms,
                                      tls)
        except _AlgorithmRefused:
            log.info("%s:%d refused CHAP_A=%s; retrying with MD5 only", host, port,
                     ",".join(map(str, chap_algorithms)))
            return await cls._connect(host, port, initiator_name, target_name, credentials,
                                      target_credentials, proposals, isid, (chap.MD5,),
                                      tls)

    @classmethod
    async def _connect(
        cls, host: str, port: int, initiator_name: str, target_name: str | None,
        credentials: ChapCredentials | None, target_credentials: ChapCredentials | None,
        proposals: Mapping[str, str] | None, isid: bytes | None,
        chap_algorithms: tuple[int, ...], tls: ClientTLS | None,
    ) -> Session:
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
        return cls(stream, login, portal)

    # ---------------------------------------------------------------- reader

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Receive PDUs until the connection ends; fails every pending command then."""
        task_status.started()
        try:
            while True:
                pdu = await self.stream.receive_pdu()
                await self._dispatch(pdu)
        except ConnectionClosed as exc:
            self._fail_all(f"connection to {self.portal} lost: {exc}")
        except Exception as exc:
            self._fail_all(f"protocol error from {self.portal}: {exc}")
            await self.stream.aclose()

    def _fail_all(self, reason: str) -> None:
        self._closed = reason
        for p in self._pending.values():
            p.error = reason
            p.done.set()
        self._wake_window_waiters()

    def _wake_window_waiters(self) -> None:
        if self._window_opened is not None:
            self._window_opened.set()
            self._window_opened = None

    def _update_window(self, expcmdsn: int, maxcmdsn: int) -> None:
        if sn_le(self.maxcmdsn, maxcmdsn):
            self.maxcmdsn = maxcmdsn
        if sn_lt(self.expcmdsn, expcmdsn):
            self.expcmdsn = expcmdsn

    def _place_data_in(self, bhs: bytes) -> memoryview | None:
        """Where the data of a large Data-In goes: straight into its command's buffer, at
        its offset (the reader receives it there, and _dispatch finds it in place)."""
        if bhs[0] & 0x3F != Opcode.DATA_IN:
            return None
        p = self._pending.get(int.from_bytes(bhs[16:20], "big"))
        if p is None or p.buffer is None:
            return None
        offset = int.from_bytes(bhs[40:44], "big")
        end = offset + int.from_bytes(bhs[5:8], "big")
        if end > len(p.buffer):
            return None  # refused by _dispatch
        return memoryview(p.buffer)[offset:end]

    async def _dispatch(self, pdu: P.PDU) -> None:
        if hasattr(pdu, "maxcmdsn"):
            self._update_window(pdu.expcmdsn, pdu.maxcmdsn)  # type: ignore[attr-defined]
            self._wake_window_waiters()
        if isinstance(pdu, P.DataIn):
            p = self._pending.get(pdu.itt)
            if p is None or p.buffer is None:
                return
            data = pdu.data
            end = pdu.offset + len(data)
            if end > len(p.buffer):
                raise ConnectionClosed("Data-In beyond the expected length")
            if not (type(data) is memoryview and data.obj is p.buffer):  # not placed
                p.buffer[pdu.offset : end] = data
            p.received = max(p.received, end)
            if pdu.has_status:
                self.expstatsn = sn_add(pdu.statsn, 1)
                p.response = Response(pdu.status, data=p.buffer, received=p.received,
                                      residual=pdu.residual_count,
                                      overflow=pdu.residual_overflow,
                                      underflow=pdu.residual_underflow)
                p.done.set()
        elif isinstance(pdu, P.SCSIResponse):
            self.expstatsn = sn_add(pdu.statsn, 1)
            p = self._pending.get(pdu.itt)
            if p is not None:
                p.response = Response(pdu.status, sense=pdu.sense,
                                      data=p.buffer if p.buffer is not None else bytearray(),
                                      received=p.received, residual=pdu.residual_count,
                                      overflow=pdu.residual_overflow,
                                      underflow=pdu.residual_underflow)
                p.done.set()
        elif isinstance(pdu, P.R2T):
            p = self._pending.get(pdu.itt)
            if p is not None and p.data_out is not None:
                await self._send_data_out(pdu.itt, p.lun, p.data_out, pdu.offset, pdu.length,
                                          pdu.ttt)
        elif isinstance(pdu, P.NopIn):
            if pdu.itt == RESERVED_TAG:
                if pdu.ttt != RESERVED_TAG:  # the target pings us
                    await self.stream.send_pdu(P.NopOut(
                        itt=RESERVED_TAG, ttt=pdu.ttt, lun=pdu.lun, cmdsn=self.cmdsn,
                        expstatsn=self.expstatsn, immediate=True))
                return
            self.expstatsn = sn_add(pdu.statsn, 1)
            self._complete(pdu)
        elif isinstance(pdu, P.TextResponse | P.LogoutResponse | P.TaskManagementResponse):
            self.expstatsn = sn_add(pdu.statsn, 1)
            self._complete(pdu)
        elif isinstance(pdu, P.Reject):
            itt = pdu.rejected_itt
            p = self._pending.get(itt) if itt is not None else None
            if p is not None:
                p.error = f"the target rejected the request (reason 0x{pdu.reason:02x})"
                p.done.set()
        elif isinstance(pdu, P.AsyncMessage):
            log.info("%s: asynchronous event %s from the target", self.portal,
                     name_of(AsyncEvent, pdu.event))

    def _complete(self, pdu: P.PDU) -> None:
        p = self._pending.get(pdu.itt)
        if p is not None:
            p.pdu = pdu
            p.done.set()

    # ---------------------------------------------------------------- sending

    def _next_itt(self) -> int:
        itt = self._itt
        self._itt = (self._itt + 1) & 0x7FFFFFFF or 1
        return itt

    async def _take_cmdsn(self) -> int:
        """The next CmdSN, waiting while the target's command window is full.  Returns
        without a checkpoint when the window is open, so the caller's send keeps the
        CmdSN order."""
        while not sn_le(self.cmdsn, self.maxcmdsn) and self._closed is None:
            if self._window_opened is None:
                self._window_opened = trio.Event()
            await self._window_opened.wait()
        if self._closed is not None:
            raise ConnectionLost(self._closed)
        cmdsn = self.cmdsn
        self.cmdsn = sn_add(self.cmdsn, 1)
        return cmdsn

    async def _send_data_out(self, itt: int, lun: int, data: memoryview, offset: int,
                             length: int, ttt: int) -> None:
        seg = self.params.max_xmit_data_segment_length
        pdus: list[P.PDU] = []
        end = min(offset + length, len(data))
        for i, off in enumerate(range(offset, end, seg)):
            piece = data[off : min(off + seg, end)]
            pdus.append(P.DataOut(itt=itt, lun=lun, ttt=ttt, datasn=i, offset=off,
                                  data=piece, final=off + len(piece) >= end,
                                  expstatsn=self.expstatsn))
        await self.stream.send_pdus(pdus)
        self.stats["bytes_out"] += end - offset

    async def command(self, lun: int, cdb: bytes, *, data_out: Buffer | None = None,
                      read_length: int = 0, read_into: bytearray | None = None) -> Response:
        """Run one SCSI command; raises ConnectionLost if the session dies first.

        Read data lands in ``read_into`` when it is exactly ``read_length`` bytes (only
        the first ``Response.received`` bytes are written), else in a new buffer."""
        if self._closed is not None:
            raise ConnectionLost(self._closed)
        lun_field = P.encode_lun(lun)
        itt = self._next_itt()
        out = memoryview(data_out).cast("B") if data_out is not None else None
        edtl = len(out) if out is not None else read_length
        pending = _Pending(lun=lun_field)
        if read_length:
            exact = read_into is not None and len(read_into) == read_length
            pending.buffer = read_into if exact else bytearray(read_length)
        params = self.params
        immediate: Buffer = b""
        unsolicited = 0
        if out is not None and len(out):
            pending.data_out = out
            first = min(params.first_burst_length, len(out))
            if params.immediate_data:
                immediate = out[: min(first, params.max_xmit_data_segment_length)]
            if not params.initial_r2t:
                unsolicited = first
        self._pending[itt] = pending
        try:
            cmdsn = await self._take_cmdsn()
            cmd = P.SCSICommand(
                itt=itt, lun=lun_field, cdb=cdb, expected_length=edtl, cmdsn=cmdsn,
                expstatsn=self.expstatsn, read=bool(read_length), write=out is not None,
                final=unsolicited <= len(immediate), data=immediate)
            pdus: list[P.PDU] = [cmd]
            if unsolicited > len(immediate) and out is not None:
                seg = params.max_xmit_data_segment_length
                start = len(immediate)
                for i, off in enumerate(range(start, unsolicited, seg)):
                    piece = out[off : min(off + seg, unsolicited)]
                    pdus.append(P.DataOut(itt=itt, lun=lun_field, datasn=i, offset=off,
                                          data=piece, final=off + len(piece) >= unsolicited,
                                          expstatsn=self.expstatsn))
            await self.stream.send_pdus(pdus)
            await pending.done.wait()
            if pending.error is not None:
                raise ConnectionLost(pending.error)
            assert pending.response is not None
            self.stats["commands"] += 1
            self.stats["bytes_in"] += pending.received
            return pending.response
        except ConnectionClosed as exc:
            raise ConnectionLost(str(exc)) from None
        finally:
            self._pending.pop(itt, None)

    async def _request(self, pdu: P.PDU, itt: int) -> P.PDU:
        pending = _Pending()
        self._pending[itt] = pending
        try:
            await self.stream.send_pdu(pdu)
            await pending.done.wait()
            if pending.error is not None:
                raise ConnectionLost(pending.error)
            assert pending.pdu is not None
            return pending.pdu
        except ConnectionClosed as exc:
            raise ConnectionLost(str(exc)) from None
        finally:
            self._pending.pop(itt, None)

    async def text(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        itt = self._next_itt()
        req = P.TextRequest(itt=itt, cmdsn=self.cmdsn, expstatsn=self.expstatsn,
                            data=encode_text(pairs), immediate=True)
        collected = bytearray()
        while True:
            rsp = await self._request(req, itt)
            assert isinstance(rsp, P.TextResponse)
            collected += rsp.data
            if rsp.final:
                return decode_text(bytes(collected), allow_duplicates=True)
            req = P.TextRequest(itt=itt, ttt=rsp.ttt, cmdsn=self.cmdsn,
                                expstatsn=self.expstatsn, immediate=True)

    async def nop(self, data: bytes = b"") -> bytes:
        itt = self._next_itt()
        rsp = await self._request(P.NopOut(itt=itt, cmdsn=self.cmdsn, expstatsn=self.expstatsn,
                                           data=data, immediate=True), itt)
        return bytes(rsp.data)

    async def keepalive(self, interval: float = 5.0, timeout: float = 5.0) -> None:
        """NOP-Out pings; a target silent for ``timeout`` seconds is treated as gone."""
        while self._closed is None:
            await trio.sleep(interval)
            try:
                with trio.fail_after(timeout):
                    await self.nop()
            except trio.TooSlowError:
                log.warning("%s: no answer to NOP-Out within %ss; closing the session",
                            self.portal, timeout)
                self._fail_all(f"{self.portal} stopped answering (NOP-Out timeout)")
                await self.stream.aclose()
                return
            except ConnectionLost:
                return

    async def logout(self) -> None:
        if self._closed is not None:
            return
        itt = self._next_itt()
        try:
            with trio.move_on_after(5):
                await self._request(P.LogoutRequest(
                    itt=itt, reason=LogoutReason.CLOSE_SESSION, cmdsn=self.cmdsn,
                    expstatsn=self.expstatsn, immediate=True), itt)
        except ConnectionLost:
            pass
        await self.stream.aclose()

    @property
    def closed(self) -> str | None:
        return self._closed
