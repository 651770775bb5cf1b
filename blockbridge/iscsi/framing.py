"""PDU framing on a byte stream: AHS, padding and digests, both directions, no I/O.

``encode_buffers`` turns a PDU into the buffers to write (scatter-gather, no joining of
the data segment).  ``encode_with_file`` does the same for a PDU whose data segment is
a range of a file, to be sent from the page cache (``sendfile``).  ``PDUReader`` is an
incremental reader in the style of h11: feed it bytes, ask for complete PDUs, and use
``bytes_needed()`` as a hint for the next read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .constants import BHS_LENGTH, DIGEST_LENGTH, RejectReason
from .digest import digest_bytes
from .errors import DigestError, PDUFormatError
from .pdu import MAX_DATA_SEGMENT, PDU, Buffer, ahs_length, data_segment_length, decode_pdu

_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")

DEFAULT_MAX_DATA_SEGMENT = 16 * 1024 * 1024
# A data segment this large whose place the reader's owner knows (see PDUReader.placement)
# is received straight into that place.  For smaller ones the two copies saved are worth
# less than the extra read of the next header alone (128 KiB reads through FUSE were
# about 8 % slower when segments from 64 KiB were placed).
PLACED_SEGMENT = 256 * 1024
# Given the basic header segment of a PDU, where its data segment goes: a writable view of
# exactly its length, or None to receive it as usual.
Placement = Callable[[bytes], "memoryview | None"]


def padding(length: int) -> bytes:
    return _PAD[length & 3]


class HasFileno(Protocol):
    def fileno(self) -> int: ...


@dataclass(frozen=True, slots=True)
class FileRange:
    """``length`` bytes of ``file`` from ``offset``, to be sent as they are in the file
    when the PDU is written (no copy through user space).  Not a sequence: ``len()``
    of it is an error, not a byte count."""

    file: HasFileno  # asked for its descriptor at the time of sending
    offset: int
    length: int

    def part(self, start: int, length: int) -> FileRange:
        return FileRange(self.file, self.offset + start, min(length, self.length - start))


def segment_length(data: Buffer | FileRange) -> int:
    """Bytes in a data segment (or part of one), in memory or in a file."""
    if isinstance(data, FileRange):
        return data.length
    return len(data) if not isinstance(data, memoryview) else data.nbytes


@dataclass(frozen=True, slots=True)
class WithFileData:
    """A PDU to send with a file range as its data segment; its own ``data`` is empty."""

    pdu: PDU
    data: FileRange


def encode_with_file(
    item: WithFileData, *, header_digest: bool = False, data_digest: bool = False
) -> list[Buffer | FileRange]:
    """The parts of a PDU whose data segment is a file range, in order: the header as
    bytes, the range, the padding.  A data digest needs the data in memory, so it is
    refused (ValueError): use ``encode_buffers`` then."""
    if data_digest:
        raise ValueError("a data digest needs the data segment in memory")
    pdu, data = item.pdu, item.data
    if pdu.data:
        raise ValueError("the PDU carries data of its own")
    if not 0 < data.length <= MAX_DATA_SEGMENT:
        raise ValueError(f"file data segment of {data.length} bytes")
    header = _header(pdu, header_digest, data_length=data.length)
    pad = padding(data.length)
    return [header, data, pad] if pad else [header, data]


def _header(pdu: PDU, header_digest: bool, data_length: int | None = None) -> bytearray:
    """BHS (with ``data_length`` as DataSegmentLength if given), AHS and header digest."""
    header = pdu.encode_bhs()
    if data_length is not None:
        header[5:8] = data_length.to_bytes(3, "big")
    ahs = pdu.ahs
    if ahs:
        header[4] = len(ahs) // 4
        header += ahs
    if header_digest:
        header += digest_bytes(header)
    return header


def encode_buffers(
    pdu: PDU, *, header_digest: bool = False, data_digest: bool = False
) -> list[Buffer]:
    """The buffers that make up ``pdu`` on the wire, in order."""
    header = _header(pdu, header_digest)
    data = pdu.data
    n = len(data) if not isinstance(data, memoryview) else data.nbytes
    if not n:
        return [header]
    pad = padding(n)
    if data_digest:
        tail = pad + digest_bytes(data, pad)
        return [header, data, tail]
    if n <= 4096 and not isinstance(data, memoryview):
        header += data
        header += pad
        return [header]
    return [header, data, pad] if pad else [header, data]


def encode_bytes(pdu: PDU, *, header_digest: bool = False, data_digest: bool = False) -> bytes:
    return b"".join(
        bytes(b) for b in encode_buffers(pdu, header_digest=header_digest, data_digest=data_digest)
    )


class PDUReader:
    """Incremental PDU parser.

    ``feed()`` appends bytes; ``next_pdu()`` returns the next complete PDU or ``None``.
    A data segment longer than ``max_data_segment_length`` is refused before it is read.
    After an error the reader is unusable (the connection must be dropped).

    With a ``placement`` callback, the rest of a large data segment (``PLACED_SEGMENT``,
    a multiple of 4 bytes, no data digest) goes where the callback says, once its header
    is in: ``get_buffer`` then hands out that place, no more than what is missing, and
    the PDU's data is that view.  The initiator places Data-In in the command's buffer
    this way, the target the data of large writes; each saves two copies of every byte.
    """

    def __init__(
        self,
        *,
        header_digest: bool = False,
        data_digest: bool = False,
        max_data_segment_length: int = DEFAULT_MAX_DATA_SEGMENT,
    ) -> None:
        self.header_digest = header_digest
        self.data_digest = data_digest
        self.max_data_segment_length = max_data_segment_length
        # Bytes self._buf[self._pos:self._end] are received and not yet parsed; the rest
        # of the buffer is free space that get_buffer() hands out for recv_into.
        self._buf = bytearray(0)
        self._pos = 0
        self._end = 0
        self._failed: PDUFormatError | None = None
        self.placement: Placement | None = None
        # A data segment being received into its place: the PDU's header, the place and
        # how much of it is in.
        self._placed_header = b""
        self._placed: memoryview | None = None
        self._placed_filled = 0
        # After a placed segment, the next read takes a header only: large Data-In
        # usually come in a row, and this way the next one's data is placed whole.
        self._header_next = False

    def feed(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            with self.get_buffer(view.nbytes) as into:
                n = min(into.nbytes, view.nbytes)
                into[:n] = view[:n]
            self.commit(n)
            view = view[n:]

    def get_buffer(self, size: int) -> memoryview:
        """Writable space for more bytes (for ``socket.recv_into``): at least ``size``, or
        exactly the rest of a data segment that is received into its place.  Call
        :meth:`commit` with the count received and release the view before the next
        call."""
        placed = self._placed
        if placed is not None:
            if self._placed_filled < placed.nbytes:
                return placed[self._placed_filled :]
        elif self.placement is not None and self._start_placed():
            assert self._placed is not None
            return self._placed[self._placed_filled :]
        if self._pos == self._end:
            self._pos = self._end = 0
            if self._header_next:
                self._header_next = False
                hlen = BHS_LENGTH + (DIGEST_LENGTH if self.header_digest else 0)
                if len(self._buf) < hlen:
                    self._buf.extend(bytes(hlen - len(self._buf)))
                return memoryview(self._buf)[:hlen]
        if len(self._buf) - self._end < size:
            if self._pos:  # move the unparsed tail to the front
                live = self._end - self._pos
                self._buf[:live] = self._buf[self._pos : self._end]
                self._pos, self._end = 0, live
            if len(self._buf) - self._end < size:
                self._buf.extend(bytes(size - (len(self._buf) - self._end)))
        return memoryview(self._buf)[self._end :]

    def commit(self, n: int) -> None:
        """``n`` bytes were written into the view from :meth:`get_buffer`."""
        placed = self._placed
        if placed is not None and self._placed_filled < placed.nbytes:
            if not 0 <= n <= placed.nbytes - self._placed_filled:
                raise ValueError("commit() beyond the buffer handed out")
            self._placed_filled += n
            return
        if not 0 <= n <= len(self._buf) - self._end:
            raise ValueError("commit() beyond the buffer handed out")
        self._end += n

    def _start_placed(self) -> bool:
        """If the staging buffer holds the whole header of a PDU whose large data segment
        is not all in, and the placement callback knows where it goes, move what is
        there of the segment to its place and receive the rest there."""
        assert self.placement is not None
        start, avail = self._pos, self._end - self._pos
        if avail < BHS_LENGTH or self.data_digest:
            return False
        # Most PDUs are small: look at DataSegmentLength before copying the header.
        if int.from_bytes(self._buf[start + 5 : start + 8], "big") < PLACED_SEGMENT:
            return False
        bhs = bytes(self._buf[start : start + BHS_LENGTH])
        try:
            hlen, dlen, plen = self._frame_lengths(bhs)
        except PDUFormatError:
            return False  # next_pdu reports it
        if dlen < PLACED_SEGMENT or dlen != plen or not hlen <= avail < hlen + plen:
            return False
        if not self._header_intact(start, start + hlen):
            return False  # never place data by a damaged header; next_pdu reports it
        place = self.placement(bhs)
        if place is None or place.nbytes != dlen or place.readonly or not place.c_contiguous:
            return False
        have = avail - hlen
        place = place.cast("B")
        place[:have] = memoryview(self._buf)[start + hlen : self._end]
        self._placed_header = bytes(self._buf[start : start + hlen])
        self._placed, self._placed_filled = place, have
        self._pos = self._end = 0
        return True

    def _header_intact(self, start: int, end: int) -> bool:
        """Whether the header in ``_buf[start:end]`` matches its digest (if digests are
        on)."""
        if not self.header_digest:
            return True
        view = memoryview(self._buf)
        try:
            digest = end - DIGEST_LENGTH
            return digest_bytes(view[start:digest]) == view[digest:end]
        finally:
            view.release()

    @property
    def buffered(self) -> int:
        pending = len(self._placed_header) + self._placed_filled if self._placed is not None else 0
        return self._end - self._pos + pending

    def _frame_lengths(self, bhs: Buffer) -> tuple[int, int, int]:
        """(header length incl. AHS and digest, data length, padded data incl. digest)."""
        alen = ahs_length(bhs)
        dlen = data_segment_length(bhs)
        if dlen > self.max_data_segment_length:
            raise PDUFormatError(
                f"data segment of {dlen} bytes exceeds the negotiated limit "
                f"{self.max_data_segment_length}",
                RejectReason.PROTOCOL_ERROR,
            )
        hlen = BHS_LENGTH + alen + (DIGEST_LENGTH if self.header_digest else 0)
        plen = 0
        if dlen:
            plen = dlen + (-dlen & 3) + (DIGEST_LENGTH if self.data_digest else 0)
        return hlen, dlen, plen

    def bytes_needed(self) -> int:
        """How many more bytes complete the next PDU (at least 1 when nothing is known)."""
        if self._placed is not None and self._placed_filled < self._placed.nbytes:
            return self._placed.nbytes - self._placed_filled
        avail = self.buffered
        if avail < BHS_LENGTH:
            return BHS_LENGTH - avail
        bhs = memoryview(self._buf)[self._pos : self._pos + BHS_LENGTH]
        hlen, _dlen, plen = self._frame_lengths(bhs)
        return max(hlen + plen - avail, 0)

    def next_pdu(self) -> PDU | None:
        if self._failed is not None:
            raise self._failed
        try:
            return self._next()
        except PDUFormatError as exc:
            self._failed = exc
            raise

    def _next(self) -> PDU | None:
        if self._placed is not None:
            return self._placed_pdu()
        avail = self._end - self._pos
        if avail < BHS_LENGTH:
            return None
        view = memoryview(self._buf)
        start = self._pos
        bhs = view[start : start + BHS_LENGTH]
        hlen, dlen, plen = self._frame_lengths(bhs)
        if avail < hlen + plen:
            return None
        end_hdr = start + hlen
        if not self._header_intact(start, end_hdr):
            raise DigestError("header digest mismatch", header=True)
        ahs = bytes(view[start + BHS_LENGTH : start + BHS_LENGTH + ahs_length(bhs)])
        data: Buffer = b""
        if dlen:
            # Copy the data segment out so the staging buffer can be reused.
            data = bytes(view[end_hdr : end_hdr + dlen])
            if self.data_digest:
                pad_end = end_hdr + dlen + (-dlen & 3)
                got = bytes(view[pad_end : pad_end + DIGEST_LENGTH])
                if digest_bytes(view[end_hdr:pad_end]) != got:
                    self._pos = start + hlen + plen
                    raise DigestError("data digest mismatch", header=False)
        bhs_copy = bytes(bhs)
        bhs.release()
        view.release()
        self._pos = start + hlen + plen
        if self._pos == self._end:
            self._pos = self._end = 0
        return decode_pdu(bhs_copy, ahs, data)

    def _placed_pdu(self) -> PDU | None:
        place = self._placed
        assert place is not None
        if self._placed_filled < place.nbytes:
            return None
        header = self._placed_header  # its digest was checked before placing
        self._placed, self._placed_header, self._placed_filled = None, b"", 0
        self._header_next = True
        ahs = header[BHS_LENGTH : BHS_LENGTH + ahs_length(header)]
        return decode_pdu(header[:BHS_LENGTH], ahs, place)
