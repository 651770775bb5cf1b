"""The answer to a finished SCSI command, as a target sends it (RFC 7143 11.4, 11.7).

A read's data goes out in Data-In PDUs no longer than the initiator takes; a GOOD status
rides on the last of them (status collapse), any other status, or no data, comes in a
SCSI Response; residuals say how much less (or more) was moved than the command
expected.  Pure functions: the connection machine numbers the answer and calls them.
"""

from __future__ import annotations

from .framing import FileRange, WithFileData, segment_length
from .pdu import PDU, Buffer, DataIn, SCSICommand, SCSIResponse
from .segments import segments
from .target_events import Outgoing

GOOD = 0x00


def command_answer(cmd: SCSICommand, status: int, data: Buffer | FileRange, sense: bytes, *,
                   written: int | None, statsn: int, expcmdsn: int, maxcmdsn: int,
                   max_segment: int) -> list[Outgoing]:
    """The Data-In and SCSI Response PDUs that finish ``cmd``, in the order to send them,
    with StatSN ``statsn``.  ``data`` is what a read produced (sent up to the expected
    length); ``written`` what a write's CDB transfers (for its residual); ``max_segment``
    the initiator's MaxRecvDataSegmentLength."""
    edtl = cmd.expected_length
    if status == GOOD and not sense and cmd.read != cmd.write:
        # most answers: a whole read in one Data-In with its status, or a whole write
        if cmd.read:
            if segment_length(data) == edtl and 0 < edtl <= max_segment:
                return [_one_data_in(cmd, data, statsn, expcmdsn, maxcmdsn)]
        elif written is None or written == edtl:
            return [SCSIResponse(itt=cmd.itt, status=GOOD, statsn=statsn,
                                 expcmdsn=expcmdsn, maxcmdsn=maxcmdsn)]
    data = data if cmd.read else b""
    produced = segment_length(data)
    if cmd.write and not cmd.read:
        produced = written if written is not None else edtl
    overflow, underflow = produced > edtl, produced < edtl
    residual = min(abs(produced - edtl), 0xFFFFFFFF)  # a CDB may ask for > 4 GiB
    sent = min(produced, edtl) if cmd.read else 0
    view = memoryview(data) if not isinstance(data, FileRange) else None
    collapse = status == GOOD and not sense
    pdus: list[Outgoing] = []
    for datasn, (off, n, last) in enumerate(segments(0, sent, max_segment)):
        with_status = last and collapse
        pdu = DataIn(
            itt=cmd.itt, lun=cmd.lun, datasn=datasn, offset=off,
            data=view[off : off + n] if view is not None else b"",
            final=last, has_status=with_status, status=status,
            residual_overflow=with_status and overflow,
            residual_underflow=with_status and underflow,
            residual_count=residual if with_status else 0,
            statsn=statsn if with_status else 0, expcmdsn=expcmdsn, maxcmdsn=maxcmdsn)
        if isinstance(data, FileRange):
            pdus.append(WithFileData(pdu, data.part(off, n)))
        else:
            pdus.append(pdu)
    if not (pdus and collapse):
        pdus.append(SCSIResponse.with_sense(
            sense, itt=cmd.itt, status=status, expdatasn=len(pdus),
            residual_overflow=overflow, residual_underflow=underflow,
            residual_count=residual if (overflow or underflow) else 0,
            statsn=statsn, expcmdsn=expcmdsn, maxcmdsn=maxcmdsn))
    return pdus


def _one_data_in(cmd: SCSICommand, data: Buffer | FileRange, statsn: int, expcmdsn: int,
                 maxcmdsn: int) -> Outgoing:
    """All of a read's data and its GOOD status in one Data-In."""
    pdu: PDU = DataIn(itt=cmd.itt, lun=cmd.lun, datasn=0, offset=0,
                      data=b"" if isinstance(data, FileRange) else data, final=True,
                      has_status=True, status=GOOD, statsn=statsn, expcmdsn=expcmdsn,
                      maxcmdsn=maxcmdsn)
    return WithFileData(pdu, data) if isinstance(data, FileRange) else pdu
