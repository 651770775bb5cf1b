"""A disk logical unit: one entry point for commands (``submit``), gating, and the fast
path that finishes plain reads and writes at once.

The SCSI commands themselves are in sbc.py and spc.py (each with its handler table), unit
attentions and reservations in gating.py, and the way data reaches the backend in io.py.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Collection, Iterable
from functools import partial
from typing import overload

import outcome

from blockbridge.iscsi.pdu import Buffer
from blockbridge.scsi import constants as c
from blockbridge.scsi.cdb import length_field, parse_lba_cdb
from blockbridge.scsi.constants import Op, SenseKey, Status
from blockbridge.scsi.sense import CheckCondition, invalid_field_in_cdb

from . import pages, sbc, spc
from .backends.base import Backend
from .budget import SessionBudget
from .command import (
    IN_FLIGHT,
    INLINE_IO,
    MEDIUM_WRITES,
    READS,
    READS_WRITES,
    TRANSFER_OPS,
    VERIFY,
    WRITE_VERIFY,
    WRITES,
    Handler,
    InFlight,
    Nexus,
    Pending,
    SCSIResult,
    not_supported_lun_result,
    report_luns_data,
)
from .gating import Gate
from .io import URING_READ, IOEngine
from .reservations import Conflict
from .uring import FollowUp
from .writegate import WriteGate

__all__ = ["IN_FLIGHT", "InFlight", "LogicalUnit", "Nexus", "Pending", "SCSIResult",
           "not_supported_lun_result", "report_luns_data"]

log = logging.getLogger(__name__)

# Gets the result of a read started without a task; what it returns runs after the batch
# of completions it came with.
ReadDone = Callable[[SCSIResult], FollowUp | None]

# Reads of this size or more that are in the page cache are sent from it (sendfile) where
# the connection allows.  A 64 KiB read costs less to copy than the two system calls more.
SENDFILE_READ = 128 << 10
# Commands that read blocks and then write them: no other write may run meanwhile.
_READ_THEN_WRITE = frozenset({Op.COMPARE_AND_WRITE, Op.ORWRITE_16})
_HANDLERS: dict[int, Handler] = {**sbc.HANDLERS, **spc.HANDLERS}
# Commands that need an optional capability of the backend: without it they answer
# INVALID COMMAND OPERATION CODE, and REPORT SUPPORTED OPERATION CODES leaves them out.
NEEDS: dict[int, str] = {Op.UNMAP: "can_trim", Op.SYNCHRONIZE_CACHE_10: "can_flush",
                         Op.SYNCHRONIZE_CACHE_16: "can_flush"}


def handlers_for(backend: Backend) -> dict[int, Handler]:
    """The handler table of a unit over ``backend``: the commands its capabilities allow."""
    return {op: fn for op, fn in _HANDLERS.items()
            if op not in NEEDS or getattr(backend.caps, NEEDS[op])}


class LogicalUnit:
    # MAXIMUM TRANSFER LENGTH, in bytes: 65536 blocks of 512 bytes, as many as a WRITE
    # SAME may cover in a 4-byte length (libiscsi writes that many before unmapping them)
    DEFAULT_MAX_TRANSFER = 32 * 1024 * 1024

    def __init__(
        self,
        number: int,
        backend: Backend,
        *,
        target_name: str,
        block_size: int = 512,
        read_only: bool = False,
        write_cache: bool = True,
        serial: str | None = None,
        scsi_id: str | None = None,
        max_transfer_bytes: int = DEFAULT_MAX_TRANSFER,
    ) -> None:
        self.number = number
        self.backend = backend
        self.block_size = block_size
        self.blocks = backend.size // block_size
        self.read_only = read_only or not backend.caps.can_write
        self.mode = pages.ModeState(write_cache=write_cache)
        self.identity = pages.Identity.derive(target_name, number, scsi_id=scsi_id,
                                              serial=serial)
        self.geometry = pages.Geometry(
            block_size, self.blocks, backend.caps.can_trim and not self.read_only,
            max(max_transfer_bytes // block_size, 1))
        self.gate = Gate()  # unit attentions and reservations
        self.io = IOEngine(backend)
        self.geometry.trim_zeroes = backend.caps.trim_zeroes
        self.handlers = handlers_for(backend)
        self._writes = WriteGate()  # COMPARE AND WRITE and ORWRITE run alone

    @property
    def size_bytes(self) -> int:
        return self.blocks * self.block_size

    # ---------------------------------------------------------------- nexus events

    def nexus_lost(self, nexus: Nexus) -> None:
        self.gate.nexus_lost(nexus)

    def logical_unit_reset(self, by: Nexus | None) -> None:
        self.gate.reset(by)

    def target_reset(self, by: Nexus | None, cold: bool = False) -> None:
        self.gate.reset(by)

    def unit_attention(self, ua: tuple[int, int], nexuses: Iterable[Nexus]) -> None:
        """Establish the unit attention ``ua`` (asc, ascq) for each I_T nexus, including
        ones that never addressed this unit yet: their next command to it reports it."""
        self.gate.unit_attention(ua, nexuses)

    # ---------------------------------------------------------------- reload

    def adopt(self, fresh: LogicalUnit) -> bool:
        """Take the capacity of ``fresh``, this unit's Lun line as a reload read it again,
        and its backing store if that is another one (a new Path=, Blocks= of a nullio
        LUN); ``fresh`` is used up.  The unit keeps its mode pages, reservations and
        unit attentions.  Returns whether the capacity data (READ CAPACITY) changed."""
        before = (self.blocks, self.block_size)
        if fresh.backend.description != self.backend.description:
            self.backend, fresh.backend = fresh.backend, self.backend
            self.io, fresh.io = fresh.io, self.io  # fresh closes the old
            self.handlers = fresh.handlers
            self.geometry.can_unmap = self.backend.caps.can_trim and not self.read_only
            self.geometry.trim_zeroes = self.backend.caps.trim_zeroes
        else:
            self.backend.size = fresh.backend.size  # the file or device may have grown
        fresh.close()
        self.block_size = self.geometry.block_size = fresh.block_size
        self.blocks = self.geometry.blocks = self.backend.size // self.block_size
        return (self.blocks, self.block_size) != before

    # ---------------------------------------------------------------- data-out sizing

    def data_out_length(self, cdb: bytes) -> int:
        """How many Data-Out bytes the CDB asks for (0 for commands without Data-Out)."""
        if not cdb:
            return 0
        op = cdb[0]
        bs = self.block_size
        try:
            if op in WRITES or op in WRITE_VERIFY or op == Op.ORWRITE_16:
                return parse_lba_cdb(cdb)[1] * bs
            if op in VERIFY:
                _lba, n, flags = parse_lba_cdb(cdb)
                bytchk = (flags >> 1) & 3
                return n * bs if bytchk == 1 else bs if bytchk == 3 and n else 0
            if op in (Op.WRITE_SAME_10, Op.WRITE_SAME_16):
                return 0 if (op == Op.WRITE_SAME_16 and cdb[1] & 1) else bs
            if op == Op.COMPARE_AND_WRITE and len(cdb) >= 16:
                return 2 * cdb[13] * bs
            if op == Op.UNMAP and len(cdb) >= 10:
                return int.from_bytes(cdb[7:9], "big")
            if op == Op.MODE_SELECT_6 and len(cdb) >= 6:
                return cdb[4]
            if op == Op.MODE_SELECT_10 and len(cdb) >= 10:
                return int.from_bytes(cdb[7:9], "big")
            if op == Op.PERSISTENT_RESERVE_OUT and len(cdb) >= 10:
                return int.from_bytes(cdb[5:9], "big")
        except CheckCondition:
            return 0
        return 0

    # ---------------------------------------------------------------- execution

    @overload
    def submit(self, cdb: bytes, nexus: Nexus, data: Buffer = b"", *, done: None = None,
               files: bool = False, budget: SessionBudget | None = None
               ) -> SCSIResult | Pending: ...

    @overload
    def submit(self, cdb: bytes, nexus: Nexus, data: Buffer = b"", *,
               done: ReadDone, files: bool = False,
               budget: SessionBudget | None = None) -> SCSIResult | Pending | InFlight: ...

    def submit(self, cdb: bytes, nexus: Nexus, data: Buffer = b"", *,
               done: ReadDone | None = None, files: bool = False,
               budget: SessionBudget | None = None) -> SCSIResult | Pending | InFlight:
        """Run a command: the one way in.

        Returns its :class:`SCSIResult` when it finished at once (a read served from
        the page cache, a write-back write of whole pages that came with the command);
        :data:`IN_FLIGHT` when ``done`` was given and the command was started without a
        task (a page-cache miss read on io_uring): ``done(result)`` is then called on the
        event loop once it completes (what it returns runs after the batch of
        completions it came with); otherwise a :class:`Pending` to await, in a task,
        for the result (every other case: errors, unit attentions, reservations, waits
        for the disk).

        ``data`` is all of the command's Data-Out.  With ``files`` (the caller can send
        file ranges) a large cached read may answer with the range itself, sent by
        ``sendfile``.  A read finished at once or in flight reserves its buffer in
        ``budget`` until ``release``; without room there it is left to the task.
        """
        if cdb:
            result = self._finish_at_once(cdb, nexus, data, files, budget)
            if result is not None:
                return result
            if done is not None and cdb[0] in READS \
                    and self._start_read(cdb, nexus, done, budget):
                return IN_FLIGHT
        return Pending(partial(self._run, bytes(cdb), data, nexus))

    async def execute(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        """``submit`` and wait for the result (for callers that run in a task anyway)."""
        outcome = self.submit(cdb, nexus, data)
        return outcome if isinstance(outcome, SCSIResult) else await outcome

    async def _run(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        try:
            return await self._execute(cdb, data, nexus)
        except CheckCondition as cc:
            return self._check_condition(cc)
        except Conflict:
            return SCSIResult(Status.RESERVATION_CONFLICT)
        except OSError as exc:
            return self._medium_error(cdb, exc)

    def _medium_error(self, cdb: bytes, exc: OSError) -> SCSIResult:
        log.error("LUN %d: I/O error on %s: %s", self.number, self.backend.description, exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # A thin LUN whose file system is full: what SBC-3 reports for a thin LUN
            # out of space, so that initiators can tell it from a broken disk.
            key, asc = SenseKey.DATA_PROTECT, c.SPACE_ALLOCATION_FAILED_WRITE_PROTECT
        else:
            key = SenseKey.MEDIUM_ERROR
            asc = c.WRITE_ERROR if cdb and cdb[0] in MEDIUM_WRITES else c.UNRECOVERED_READ_ERROR
        return self._check_condition(CheckCondition(key, asc))

    def _finish_at_once(self, cdb: bytes, nexus: Nexus, data: Buffer, files: bool,
                        budget: SessionBudget | None) -> SCSIResult | None:
        """A read whose data is in the page cache, or a write-back write of whole pages
        whose data came with the command, done with no task switch; None for anything
        else (another command, a unit attention, a reservation, an error to report, a
        page-cache miss, a write that would wait, no room in the budget)."""
        fields = self._plain_rw(cdb, nexus, READS_WRITES, INLINE_IO)
        if fields is None:
            return None
        offset, length, flags = fields
        op = cdb[0]
        if op in READS:
            rng = self.io.range_at_once(offset, length) \
                if files and length >= SENDFILE_READ else None
            if rng is not None:
                result = SCSIResult(data=rng)
            else:
                if budget is not None and not budget.try_take(length):
                    return None
                buf = self.io.pool.take(length)
                if not self.io.read_at_once(offset, buf):
                    self._recycle(buf, budget)
                    return None
                result = SCSIResult(data=buf, release=partial(self._recycle, buf, budget))
            return result
        fua = bool(flags & 0x08) and op != Op.WRITE_6
        if fua or not self.mode.write_cache or self.read_only or self.mode.swp \
                or len(data) != length or length > INLINE_IO or not self._writes.open:
            return None
        if not self.io.write_at_once(offset, memoryview(data)):
            return None
        return SCSIResult()

    def _plain_rw(self, cdb: bytes, nexus: Nexus, ops: Collection[int],
                  limit: int) -> tuple[int, int, int] | None:
        """(byte offset, byte length, flags) of a command in ``ops`` (READs, WRITEs)
        that needs none of ``execute``'s checks and answers: no unit attention or
        reservation, no protection bits, in range, of 1 byte to ``limit`` bytes.  None
        otherwise."""
        if not cdb or cdb[0] not in ops:
            return None
        if not self.gate.quiet(nexus):
            return None
        try:
            lba, n, flags = parse_lba_cdb(cdb)
        except CheckCondition:
            return None
        bs = self.block_size
        if flags & 0xE0 or not 0 < n * bs <= limit or lba + n > self.blocks \
                or n > self.geometry.max_transfer_blocks:
            return None
        return lba * bs, n * bs, flags

    def _recycle(self, buf: bytearray, budget: SessionBudget | None) -> None:
        """A read buffer was sent (or is not needed): back to the pool and the budget."""
        self.io.pool.give(buf)
        if budget is not None:
            budget.give(len(buf))

    def _start_read(self, cdb: bytes, nexus: Nexus, done: ReadDone,
                    budget: SessionBudget | None) -> bool:
        """Start a plain READ that missed the page cache on io_uring; ``done`` gets its
        result on the event loop, from the completion.  False (nothing started) for
        anything else, or without room in the budget."""
        if not self.io.starts_reads:
            return False
        fields = self._plain_rw(cdb, nexus, READS, URING_READ)
        if fields is None:
            return False
        offset, length, _flags = fields
        if budget is not None and not budget.try_take(length):
            return False
        buf = self.io.pool.take(length)

        def finished(got: outcome.Outcome[int]) -> FollowUp | None:
            try:
                count = got.unwrap()
            except OSError as exc:
                self._recycle(buf, budget)
                return done(self._medium_error(cdb, exc))
            if count < length:  # the end of a backing file that shrank: zeros
                buf[count:] = bytes(length - count)
            return done(SCSIResult(data=buf, release=partial(self._recycle, buf, budget)))

        if not self.io.start_read(offset, buf, finished):
            self._recycle(buf, budget)
            return False
        return True

    # ---------------------------------------------------------------- buffers and limits

    @property
    def max_transfer_bytes(self) -> int:
        """The largest transfer the Block Limits page allows one command, in bytes."""
        return self.geometry.max_transfer_blocks * self.block_size

    def _check_transfer(self, cdb: bytes) -> None:
        """INVALID FIELD IN CDB for a transfer longer than MAXIMUM TRANSFER LENGTH (SBC-3,
        Block Limits VPD page), pointing at the transfer length field."""
        n = parse_lba_cdb(cdb)[1]
        if n > self.geometry.max_transfer_blocks:
            raise invalid_field_in_cdb(length_field(cdb[0]))

    def buffer_length(self, cdb: bytes) -> int:
        """How many bytes the command reads into a buffer of its own (a READ's data, the
        blocks VERIFY and ORWRITE read to compare or merge), for the caller's budget; 0
        for anything else (their buffers are small or the caller's write buffer)."""
        if not cdb:
            return 0
        op = cdb[0]
        try:
            if op in READS or op == Op.ORWRITE_16:
                return parse_lba_cdb(cdb)[1] * self.block_size
            if op in VERIFY:
                _lba, n, flags = parse_lba_cdb(cdb)
                return n * self.block_size if (flags >> 1) & 3 else 0
            if op == Op.COMPARE_AND_WRITE and len(cdb) >= 14:
                return cdb[13] * self.block_size
        except CheckCondition:
            return 0
        return 0

    def refuse_early(self, cdb: bytes, nexus: Nexus, expected_length: int,
                     write: bool) -> SCSIResult | None:
        """The answer to a command that fails before any of its data matters, or None.
        Asked before a buffer is reserved or data solicited: a transfer longer than the
        Block Limits page allows (or, for a write, an expected data transfer length
        beyond it), and a READ or WRITE out of range or to a write-protected unit.  Only
        where ``execute`` would give the same answer: a pending unit attention or a
        reservation is left to it."""
        op = cdb[0] if cdb else -1
        try:
            if write and expected_length > self.max_transfer_bytes:
                raise invalid_field_in_cdb()
            if op not in TRANSFER_OPS:
                return None
            if not self.gate.quiet(nexus):
                return None
            self._check_transfer(cdb)
            if op in READS_WRITES:
                lba, n, flags = parse_lba_cdb(cdb)
                if flags & 0xE0:
                    raise invalid_field_in_cdb(1)
                if op in WRITES:
                    self.check_writable()
                self.check_range(lba, n)
        except CheckCondition as cc:
            return self._check_condition(cc)
        return None

    def _check_condition(self, cc: CheckCondition) -> SCSIResult:
        return SCSIResult(Status.CHECK_CONDITION, sense=cc.sense(self.mode.d_sense))

    async def _execute(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        if not cdb:
            raise invalid_field_in_cdb(0)
        op = cdb[0]
        self.gate.admit(op, nexus)  # a unit attention first, then reservations
        handler = self.handlers.get(op)
        if handler is None:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.INVALID_COMMAND_OPERATION_CODE,
                                 field_pointer=0)
        if op in TRANSFER_OPS:
            self._check_transfer(cdb)
        if op in _READ_THEN_WRITE:
            async with self._writes.exclusive():
                return await handler(self, cdb, data, nexus)
        if op in MEDIUM_WRITES:
            async with self._writes.shared():
                return await handler(self, cdb, data, nexus)
        return await handler(self, cdb, data, nexus)

    # ---------------------------------------------------------------- helpers

    def check_range(self, lba: int, n: int) -> None:
        if lba + n > self.blocks or lba > self.blocks:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.LBA_OUT_OF_RANGE)

    def check_writable(self) -> None:
        if self.read_only or self.mode.swp:
            raise CheckCondition(SenseKey.DATA_PROTECT, c.WRITE_PROTECTED)

    async def flush(self) -> None:
        if not self.read_only:
            await self.io.flush()

    def close(self) -> None:
        self.io.close()
