"""A trio PDU stream: the sans-IO framing of :mod:`blockbridge.iscsi.framing` over any trio stream.

One reader task calls :meth:`PDUStream.receive_pdu`; any number of tasks may call
:meth:`PDUStream.send_pdu`, which serialises writers.  A write that is interrupted (for
example by cancellation) may have put part of a PDU on the wire, so the stream is then
marked broken and every later call raises :class:`ConnectionClosed`.

On plain TCP a PDU may carry a range of a file as its data segment
(:class:`~blockbridge.iscsi.framing.WithFileData`): the range goes out with
``sendfile``, from the page cache to the socket without a copy through user space.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Callable, Iterable, Sequence

import trio

from .iscsi.framing import (
    DEFAULT_MAX_DATA_SEGMENT,
    FileRange,
    PDUReader,
    Placement,
    WithFileData,
    encode_buffers,
    encode_with_file,
    segment_length,
)
from .iscsi.pdu import PDU, Buffer
from .poller import elsewhere
from .tls import ClientTLS, TLSError

RECEIVE_CHUNK = 256 * 1024
# Before login a peer has proved nothing: what it sends is read in small pieces, so an
# idle or slow connection costs a few KiB, not a full receive buffer.
LOGIN_RECEIVE_CHUNK = 4096
_IOV_MAX = 1024
FAIR_SHARE = 16  # receives in a row that find data before other tasks get a turn


class ConnectionClosed(Exception):
    """The peer closed the connection, or an earlier failure left it unusable."""


class PDUStream:
    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_data_segment_length: int = DEFAULT_MAX_DATA_SEGMENT,
        receive_chunk: int = RECEIVE_CHUNK,
    ) -> None:
        self.stream = stream
        # The least each receive asks for (the reader's buffer grows to it); a larger PDU
        # still gets the room it needs.
        self.receive_chunk = receive_chunk
        self._reader = PDUReader(max_data_segment_length=max_data_segment_length)
        self._queue: list[Buffer | FileRange] = []
        self._after: list[Callable[[], None]] = []  # run once the queued buffers are written
        self.backlog = 0  # bytes of PDUs queued and not yet handed to a write
        self._writing = False
        self._batch_done = trio.Event()
        # Plain TCP: write with sendmsg (scatter-gather, one system call per batch).
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        # The standard socket inside trio's: a send that succeeds at once goes through it
        # directly.  trio's own sendmsg ends every successful call with a pass of the
        # scheduler, which at 128 KiB reads cost more than the system call.  Where trio
        # ever stops having one, its sendmsg is used.
        raw = getattr(self._socket, "_sock", None)
        self._raw: socket.socket | None = raw if isinstance(raw, socket.socket) else None
        # Runs before each receive from the socket: a caller that posts PDUs while it
        # handles what it received writes them there.
        self.before_receive: Callable[[], None] | None = None
        self._streak = 0  # receives in a row that found data
        self._broken: str | None = None
        self.header_digest = False
        self.data_digest = False
        self.bytes_sent = 0
        self.bytes_received = 0

    # Digest settings and limits apply to the reader too.
    @property
    def header_digest(self) -> bool:
        return self._header_digest

    @header_digest.setter
    def header_digest(self, value: bool) -> None:
        self._header_digest = value
        self._reader.header_digest = value

    @property
    def data_digest(self) -> bool:
        return self._data_digest

    @data_digest.setter
    def data_digest(self, value: bool) -> None:
        self._data_digest = value
        self._reader.data_digest = value

    @property
    def placement(self) -> Placement | None:
        """Where large data segments go (see :class:`PDUReader`); None: the usual way."""
        return self._reader.placement

    @placement.setter
    def placement(self, value: Placement | None) -> None:
        self._reader.placement = value

    @property
    def max_data_segment_length(self) -> int:
        return self._reader.max_data_segment_length

    @max_data_segment_length.setter
    def max_data_segment_length(self, value: int) -> None:
        self._reader.max_data_segment_length = value

    @property
    def sends_files(self) -> bool:
        """Whether ``post`` takes PDUs with a file range as data (plain TCP, no data
        digest)."""
        return self._socket is not None and not self._data_digest

    @property
    def broken(self) -> bool:
        return self._broken is not None

    async def receive_pdu(self) -> PDU:
        """Next PDU from the peer; raises ConnectionClosed at EOF, PDUFormatError on bad input."""
        while True:
            pdu = self._reader.next_pdu()
            if pdu is not None:
                return pdu
            if self._broken is not None:
                raise ConnectionClosed(self._broken)
            want = max(self._reader.bytes_needed(), self.receive_chunk)
            try:
                if self._socket is not None:  # straight into the reader's buffer
                    n = await self._receive_into_reader(self._socket, want)
                else:
                    with elsewhere():  # a poller must not hold up what only trio sees
                        chunk = await self.stream.receive_some(want)
                    n = len(chunk)
                    self._reader.feed(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._broken = f"connection lost: {exc}"
                raise ConnectionClosed(self._broken) from exc
            if not n:
                if self._reader.buffered:
                    self._broken = "connection closed in the middle of a PDU"
                else:
                    self._broken = "connection closed by peer"
                raise ConnectionClosed(self._broken)
            self.bytes_received += n

    async def _receive_into_reader(self, sock: trio.socket.SocketType, want: int) -> int:
        """Read from the socket's descriptor: a read that finds data returns without a
        pass of trio's scheduler (trio's ``recv_into`` takes one after every call).
        ``before_receive`` runs first, so what the caller posted while it handled the
        bytes of the last receive goes out before it reads more or waits."""
        await trio.lowlevel.checkpoint_if_cancelled()
        hook = self.before_receive
        fd = sock.fileno()  # -1 once closed: the read fails with EBADF
        with self._reader.get_buffer(want) as view:
            if hook is not None:
                hook()
            while True:
                try:
                    n = os.readv(fd, [view])
                    break
                except BlockingIOError:
                    self._streak = 0
                    with elsewhere():  # a poller must not hold up what only trio sees
                        await trio.lowlevel.wait_readable(sock)
        self._reader.commit(n)
        self._streak += 1
        if self._streak >= FAIR_SHARE:  # data all along: let the other tasks run too
            self._streak = 0
            await trio.lowlevel.cancel_shielded_checkpoint()
        return n

    @property
    def pollable(self) -> int | None:
        """The descriptor a ``Poller`` may watch for this stream (plain TCP), or None."""
        return self._raw.fileno() if self._raw is not None else None

    def buffered_pdu(self) -> PDU | None:
        """The next PDU among the bytes received so far, without receiving (raises
        PDUFormatError on bad input)."""
        return self._reader.next_pdu()

    def receive_now(self) -> bool:
        """One receive of what the socket holds, without waiting (for a ``Poller``'s
        handler); True if it filled the room it had (more may be waiting).  Raises
        ConnectionClosed at EOF."""
        if self._broken is not None:
            raise ConnectionClosed(self._broken)
        raw = self._raw
        assert raw is not None
        reader = self._reader
        try:
            with reader.get_buffer(max(reader.bytes_needed(), self.receive_chunk)) as view:
                room = view.nbytes
                n = raw.recv_into(view)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._broken = f"connection lost: {exc}"
            raise ConnectionClosed(self._broken) from exc
        if not n:
            self._broken = "connection closed in the middle of a PDU" if reader.buffered \
                else "connection closed by peer"
            raise ConnectionClosed(self._broken)
        reader.commit(n)
        self.bytes_received += n
        return n == room

    async def send_pdu(self, pdu: PDU) -> None:
        await self.send_pdus((pdu,))

    async def send_pdus(self, pdus: Iterable[PDU | WithFileData]) -> None:
        """Send PDUs in call order and return once they are written.  Encoding and
        queueing happen before the first checkpoint, so callers that number PDUs (CmdSN,
        StatSN) just before calling keep their order on the wire without a lock."""
        self.post(pdus)
        await self.flush()

    def post(self, pdus: Iterable[PDU | WithFileData],
             after: Callable[[], None] | None = None) -> None:
        """Queue PDUs without waiting: they go out with the write in progress or the next
        ``flush``, in call order with every other PDU.  ``after`` runs once they have
        been written (not if the write fails), e.g. to recycle a data buffer.  PDUs with
        file data are taken only where ``sends_files`` (ValueError otherwise)."""
        if self._broken is not None:
            raise ConnectionClosed(self._broken)
        hd, dd = self._header_digest, self._data_digest
        queue = self._queue
        for pdu in pdus:
            if isinstance(pdu, WithFileData):
                if not self.sends_files:
                    raise ValueError("file data needs plain TCP without a data digest")
                parts: Sequence[Buffer | FileRange] = encode_with_file(pdu, header_digest=hd)
            else:
                parts = encode_buffers(pdu, header_digest=hd, data_digest=dd)
            queue.extend(parts)
            self.backlog += sum(segment_length(p) for p in parts)
        if after is not None:
            self._after.append(after)

    def write_now(self) -> bool:
        """Hand what is queued to the socket without waiting.  True: nothing is left for
        ``flush`` (all of it was written, or a write in progress takes it); False: the
        socket took only part, or this stream cannot write without waiting (TLS, a
        memory stream, file data), so someone must ``flush()``."""
        if self._broken is not None:
            raise ConnectionClosed(self._broken)
        queue = self._queue
        if not queue or self._writing:
            return True
        raw = self._raw
        if raw is None:
            return False
        views = []
        for part in queue:
            if isinstance(part, FileRange):
                return False
            views.append(memoryview(part).cast("B"))
        try:
            n = raw.sendmsg(views[:_IOV_MAX])
        except BlockingIOError:
            return False
        except OSError as exc:
            self._broken = f"connection lost: {exc}"
            self._queue.clear()
            self._after.clear()
            self.backlog = 0
            raise ConnectionClosed(self._broken) from exc
        self.bytes_sent += n
        self.backlog -= n
        if n == sum(v.nbytes for v in views):
            queue.clear()
            after, self._after = self._after, []
            for fn in after:
                fn()
            return True
        _drop_written(views, n)  # keep what was not written, in order
        self._queue = list(views)
        return False

    async def flush(self, gather: bool = True) -> None:
        """Return once everything queued so far is written.

        Tasks that flush while another one is writing do not wait for a lock: their
        PDUs join the queue and the task already writing sends everything queued in one
        system call (group commit), which is what makes many small responses cheap.
        With ``gather`` the writer first lets every task that is ready to run queue its
        PDUs too; a caller that was itself woken a scheduler pass after the PDUs were
        posted (a flusher task) has given them that chance already.
        """
        if self._broken is not None:
            raise ConnectionClosed(self._broken)
        if self._writing:
            batch = self._batch_done
            await batch.wait()
            if self._broken is not None:
                raise ConnectionClosed(self._broken)
            return
        self._writing = True
        try:
            if gather:
                # Let every task that is ready to run now queue its PDUs too, so that
                # they share this write; it costs one pass of the scheduler, not a timer.
                await trio.lowlevel.cancel_shielded_checkpoint()
            while self._queue:
                out, self._queue = self._queue, []
                after, self._after = self._after, []
                self.backlog = 0
                done, self._batch_done = self._batch_done, trio.Event()
                try:
                    await self._write(out)
                finally:
                    done.set()
                for fn in after:
                    fn()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._broken = f"connection lost: {exc}"
            raise ConnectionClosed(self._broken) from exc
        except BaseException:
            if self._broken is None:
                self._broken = "a PDU write was interrupted"
            raise
        finally:
            self._writing = False
            if self._broken is not None:
                self._queue.clear()
                self._after.clear()
                self.backlog = 0
            # Whoever waits for the batch after the last one written had nothing left in
            # the queue (else it would have been written): wake them, and let the next
            # writer start a fresh batch.
            self._batch_done.set()
            self._batch_done = trio.Event()

    async def _write(self, parts: list[Buffer | FileRange]) -> None:
        sock = self._socket
        if sock is None:
            buffers: list[Buffer] = []
            for part in parts:
                if isinstance(part, FileRange):  # post refuses them here
                    raise AssertionError("file data on a stream without a socket")
                buffers.append(part)
            for buf in _coalesce(buffers):
                with elsewhere():
                    await self.stream.send_all(buf)
                self.bytes_sent += len(buf)
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        start = 0
        for i, part in enumerate(parts):
            if isinstance(part, FileRange):
                if start < i:  # the header goes out with the file data that follows
                    await self._sendmsg(sock, parts[start:i], socket.MSG_MORE)
                await self._sendfile(sock, part)
                start = i + 1
        if start < len(parts):
            await self._sendmsg(sock, parts[start:], 0)

    async def _sendmsg(self, sock: trio.socket.SocketType,
                       buffers: Sequence[Buffer | FileRange], flags: int) -> None:
        views = [memoryview(b).cast("B") for b in buffers if not isinstance(b, FileRange)]
        raw = self._raw
        while views:
            if raw is None:
                with elsewhere():
                    n = await sock.sendmsg(views[:_IOV_MAX], (), flags)
            else:
                try:
                    n = raw.sendmsg(views[:_IOV_MAX], (), flags)
                except BlockingIOError:
                    await _wait_writable(sock)
                    continue
            self.bytes_sent += n
            _drop_written(views, n)

    async def _sendfile(self, sock: trio.socket.SocketType, part: FileRange) -> None:
        """Send a file range from the page cache.  The caller made sure it is cached (a
        page evicted since then is read from the disk, blocking for that read); a file
        that has become shorter is sent as zeros, which keeps the PDU framing intact."""
        await trio.lowlevel.checkpoint_if_cancelled()
        out = sock.fileno()
        offset, left = part.offset, part.length
        while left:
            try:
                n = os.sendfile(out, part.file.fileno(), offset, left)
            except BlockingIOError:
                await _wait_writable(sock)
                continue
            if not n:  # end of file
                await self._sendmsg(sock, [bytes(left)], 0)
                return
            offset += n
            left -= n
            self.bytes_sent += n

    async def aclose(self) -> None:
        if self._broken is None:
            self._broken = "connection closed"
        with trio.move_on_after(2) as scope:
            scope.shield = True
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self.stream.aclose()


async def _wait_writable(sock: trio.socket.SocketType) -> None:
    """Wait until a full socket takes data again.  The kernel may hold back the last
    bytes sent as "more to come" (``MSG_MORE``, and ``sendfile`` between its passes): if
    they fill the send buffer, no acknowledgement will ever make room.  Setting
    TCP_NODELAY first pushes them out."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with elsewhere():  # a poller must not hold up what only trio sees
        await trio.lowlevel.wait_writable(sock)


def _drop_written(views: list[memoryview], n: int) -> None:
    """Take the first ``n`` bytes, which a send wrote, off the front of ``views``."""
    while n:
        first = views[0]
        if n >= first.nbytes:
            n -= first.nbytes
            views.pop(0)
        else:
            views[0] = first[n:]
            n = 0


def _coalesce(buffers: Sequence[Buffer]) -> list[Buffer]:
    """Join runs of small buffers so each send_all moves a useful amount of data."""
    out: list[Buffer] = []
    small = bytearray()
    for buf in buffers:
        if segment_length(buf) < 16384:
            small += buf
            continue
        if small:
            out.append(bytes(small))
            small = bytearray()
        out.append(buf)
    if small:
        out.append(bytes(small))
    return out


async def open_tcp(
    host: str, port: int, *, connect_timeout: float = 15.0, tls: ClientTLS | None = None
) -> PDUStream:
    """Connect to an iSCSI portal over TCP, optionally inside TLS.

    Raises OSError/trio.TooSlowError when the connection fails and TLSError when the TLS
    handshake or the certificate check fails.
    """
    with trio.fail_after(connect_timeout):
        tcp = await trio.open_tcp_stream(host, port)
    tcp.setsockopt(6, 1, 1)  # TCP_NODELAY
    if tls is None:
        return PDUStream(tcp)
    portal = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    ssl_stream = trio.SSLStream(tcp, tls.context(), server_hostname=host)
    try:
        with trio.fail_after(connect_timeout):
            await ssl_stream.do_handshake()
        tls.check_peer(portal, ssl_stream.getpeercert(binary_form=True))
    except trio.TooSlowError:
        await tcp.aclose()
        raise TLSError(f"TLS handshake with {portal} timed out (is it a TLS portal?)") from None
    except (ssl.SSLError, trio.BrokenResourceError) as exc:
        await tcp.aclose()
        cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
        raise TLSError(f"TLS handshake with {portal} failed: {cause}") from None
    except TLSError:
        await tcp.aclose()
        raise
    return PDUStream(ssl_stream)
