"""A disk logical unit: SCSI command emulation (SPC-4/SBC-3) over a backend.

``execute`` parses the CDB, checks reservations and unit attentions, and runs the
backend call in a worker thread, so file I/O never blocks the event loop.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable, Collection, Generator, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar, overload

import outcome
import trio

from blockbridge.buffers import BufferPool
from blockbridge.iscsi.framing import FileRange
from blockbridge.iscsi.pdu import Buffer
from blockbridge.scsi import constants as c
from blockbridge.scsi.constants import Op, SenseKey, Status
from blockbridge.scsi.sense import CheckCondition, build_sense, invalid_field_in_cdb

from . import pages
from .backends.base import Backend
from .backends.file import FileBackend
from .budget import SessionBudget
from .reservations import Conflict, Reservations
from .uring import Uring, open_uring
from .writegate import WriteGate

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Nexus:
    """An I_T nexus: initiator port (name + ISID) and target port."""

    initiator_name: str
    isid: bytes
    target_name: str
    tpgt: int = 1

    @property
    def initiator_port(self) -> str:
        return f"{self.initiator_name},i,0x{self.isid.hex()}"

    def transport_id(self) -> bytes:
        name = self.initiator_port.encode() + b"\0"
        name += b"\0" * (-len(name) % 4)
        return bytes([0x45, 0]) + len(name).to_bytes(2, "big") + name


@dataclass
class SCSIResult:
    status: int = Status.GOOD
    data: Buffer | FileRange = b""  # a FileRange only from submit(files=True)
    sense: bytes = b""
    # called once ``data`` has been sent, to recycle its buffer (not after a failed send)
    release: Callable[[], None] | None = None


_invalid_cdb = invalid_field_in_cdb


class Pending:
    """A command that needs a task: await it (once) for its result."""

    __slots__ = ("_run",)

    def __init__(self, run: Callable[[], Awaitable[SCSIResult]]) -> None:
        self._run = run  # nothing starts until awaited: an unawaited Pending costs nothing

    def __await__(self) -> Generator[Any, None, SCSIResult]:
        return self._run().__await__()


class InFlight:
    """The type of :data:`IN_FLIGHT`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "IN_FLIGHT"


IN_FLIGHT = InFlight()  # started without a task: its ``done`` callback gets the result


def not_supported_lun_result() -> SCSIResult:
    """The answer for a command addressed to a LUN that does not exist."""
    return SCSIResult(Status.CHECK_CONDITION,
                      sense=build_sense(SenseKey.ILLEGAL_REQUEST, c.LOGICAL_UNIT_NOT_SUPPORTED))


def report_luns_data(luns: list[int]) -> bytes:
    from blockbridge.iscsi.pdu import encode_lun

    body = b"".join(encode_lun(n).to_bytes(8, "big") for n in sorted(luns))
    return len(body).to_bytes(4, "big") + bytes(4) + body


_READS = {Op.READ_6, Op.READ_10, Op.READ_12, Op.READ_16}
_WRITES = {Op.WRITE_6, Op.WRITE_10, Op.WRITE_12, Op.WRITE_16}
_READS_WRITES = _READS | _WRITES
_WRITE_VERIFY = {Op.WRITE_VERIFY_10, Op.WRITE_VERIFY_12, Op.WRITE_VERIFY_16}
_VERIFY = {Op.VERIFY_10, Op.VERIFY_12, Op.VERIFY_16}
# Reads up to this size are first tried on the event loop with RWF_NOWAIT (a page-cache
# copy); misses go to io_uring, or to a worker thread where io_uring is unavailable.
_INLINE_READ = 1 << 20
IO_THREADS = 32
# Reads of this size or more that are in the page cache are sent from it (sendfile) where
# the connection allows.  A 64 KiB read costs less to copy than the two system calls more.
SENDFILE_READ = 128 << 10
_URING_READ = 64 << 10
# Write-back writes up to this size go straight into the page cache from the event loop
# (see FileBackend.write_cached); write-through and FUA writes go to io_uring (or a thread).
_INLINE_WRITE = 1 << 20
# Commands a reservation never blocks.
_ALWAYS = {Op.INQUIRY, Op.REPORT_LUNS, Op.REQUEST_SENSE, Op.PERSISTENT_RESERVE_IN,
           Op.PERSISTENT_RESERVE_OUT, Op.READ_CAPACITY_10, Op.SERVICE_ACTION_IN_16,
           Op.MAINTENANCE_IN, Op.TEST_UNIT_READY, Op.RELEASE_6}
# Commands that UNIT ATTENTION does not interrupt.
_NO_UA = {Op.INQUIRY, Op.REPORT_LUNS, Op.REQUEST_SENSE}
_MEDIUM_WRITES = _WRITES | _WRITE_VERIFY | {
    Op.WRITE_SAME_10, Op.WRITE_SAME_16, Op.UNMAP, Op.COMPARE_AND_WRITE, Op.ORWRITE_16}
# Commands that read blocks and then write them: no other write may run meanwhile.
_READ_THEN_WRITE = {Op.COMPARE_AND_WRITE, Op.ORWRITE_16}
# Commands whose transfer length the Block Limits page's MAXIMUM TRANSFER LENGTH bounds,
# with the byte of the CDB where that length starts (by CDB size).
_TRANSFER_OPS = _READS_WRITES | _VERIFY | _WRITE_VERIFY | {Op.ORWRITE_16}
_LENGTH_FIELD = {6: 4, 10: 7, 12: 6, 16: 10}


def _whole_bytearray(data: Buffer) -> bytearray | None:
    """The bytearray ``data`` is, or is a complete view of; None otherwise."""
    if type(data) is bytearray:
        return data
    if isinstance(data, memoryview) and type(data.obj) is bytearray \
            and data.nbytes == len(data.obj) and data.c_contiguous:
        return data.obj
    return None


def rw_fields(cdb: bytes) -> tuple[int, int, int]:
    """(lba, number of blocks, byte 1 flags) for a 6/10/12/16-byte read/write-style CDB."""
    op = cdb[0]
    if op in (Op.READ_6, Op.WRITE_6):
        lba = ((cdb[1] & 0x1F) << 16) | (cdb[2] << 8) | cdb[3]
        return lba, cdb[4] or 256, 0
    n = len(cdb)
    if op < 0x40 or op in (Op.WRITE_SAME_10,):  # 10-byte group
        if n < 10:
            raise _invalid_cdb()
        return int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[7:9], "big"), cdb[1]
    if 0xA0 <= op < 0xC0:  # 12-byte group
        if n < 12:
            raise _invalid_cdb()
        return int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[6:10], "big"), cdb[1]
    if n < 16:
        raise _invalid_cdb()
    return int.from_bytes(cdb[2:10], "big"), int.from_bytes(cdb[10:14], "big"), cdb[1]


@dataclass
class NexusState:
    unit_attentions: list[tuple[int, int]] = field(default_factory=list)
    prevent: bool = False


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
        self.read_only = read_only or backend.read_only
        self.mode = pages.ModeState(write_cache=write_cache)
        self.identity = pages.Identity.derive(target_name, number, scsi_id=scsi_id,
                                              serial=serial)
        self.geometry = pages.Geometry(
            block_size, self.blocks, backend.can_unmap and not self.read_only,
            max(max_transfer_bytes // block_size, 1))
        self.reservations = Reservations()
        self.nexuses: dict[Nexus, NexusState] = {}
        # Worker threads for I/O that must wait for the disk (page-cache misses, writes):
        # enough to keep a queue of 32 commands busy on a device that serves them in
        # parallel, as tgtd's 16 threads per LUN do.
        self._limiter = trio.CapacityLimiter(IO_THREADS)
        # Reads that miss the page cache, writes that cannot go inline, and flushes of a
        # file or block device go through io_uring where the kernel allows it.
        self._fd = backend.fd if isinstance(backend, FileBackend) else -1
        self._ring_wanted = self._fd >= 0  # until io_uring turns out to be unavailable
        self._ring: Uring | None = None
        # read buffers, recycled once sent: enough for 8 reads of 1 MiB in flight
        self._pool = BufferPool(keep_per_size=8, max_bytes=8 << 20)
        self._writes = WriteGate()  # COMPARE AND WRITE and ORWRITE run alone
        self.stats = {"reads": 0, "writes": 0, "bytes_read": 0, "bytes_written": 0}

    @property
    def size_bytes(self) -> int:
        return self.blocks * self.block_size

    # ---------------------------------------------------------------- nexus events

    def _state(self, nexus: Nexus) -> NexusState:
        st = self.nexuses.get(nexus)
        if st is None:
            st = self.nexuses[nexus] = NexusState()
        return st

    def nexus_lost(self, nexus: Nexus) -> None:
        self.nexuses.pop(nexus, None)
        self.reservations.nexus_lost(nexus)

    def logical_unit_reset(self, by: Nexus | None) -> None:
        self.reservations.reset()
        for nexus, st in self.nexuses.items():
            st.prevent = False
            if nexus != by:
                self._add_ua(st, c.BUS_DEVICE_RESET)

    def target_reset(self, by: Nexus | None, cold: bool = False) -> None:
        self.logical_unit_reset(by)

    @staticmethod
    def _add_ua(st: NexusState, ua: tuple[int, int]) -> None:
        if ua not in st.unit_attentions and len(st.unit_attentions) < 8:
            st.unit_attentions.append(ua)

    # ---------------------------------------------------------------- reload

    def unit_attention(self, ua: tuple[int, int], nexuses: Iterable[Nexus]) -> None:
        """Establish the unit attention ``ua`` (asc, ascq) for each I_T nexus, including
        ones that never addressed this unit yet: their next command to it reports it."""
        for nexus in nexuses:
            self._add_ua(self._state(nexus), ua)

    def adopt(self, fresh: LogicalUnit) -> bool:
        """Take the capacity of ``fresh``, this unit's Lun line as a reload read it again,
        and its backing store if that is another one (a new Path=, Blocks= of a nullio
        LUN); ``fresh`` is used up.  The unit keeps its mode pages, reservations and
        unit attentions.  Returns whether the capacity data (READ CAPACITY) changed."""
        before = (self.blocks, self.block_size)
        if fresh.backend.description != self.backend.description:
            if self._ring is not None:
                self._ring.close()
                self._ring = None
            self.backend, fresh.backend = fresh.backend, self.backend  # fresh closes the old
            self._fd, self._ring_wanted = fresh._fd, fresh._ring_wanted
            self.geometry.can_unmap = self.backend.can_unmap and not self.read_only
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
            if op in _WRITES or op in _WRITE_VERIFY or op == Op.ORWRITE_16:
                return rw_fields(cdb)[1] * bs
            if op in _VERIFY:
                _lba, n, flags = rw_fields(cdb)
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
               done: Callable[[SCSIResult], None], files: bool = False,
               budget: SessionBudget | None = None) -> SCSIResult | Pending | InFlight: ...

    def submit(self, cdb: bytes, nexus: Nexus, data: Buffer = b"", *,
               done: Callable[[SCSIResult], None] | None = None, files: bool = False,
               budget: SessionBudget | None = None) -> SCSIResult | Pending | InFlight:
        """Run a command: the one way in.

        Returns its :class:`SCSIResult` when it finished at once (a read served from
        the page cache, a write-back write of whole pages that came with the command);
        :data:`IN_FLIGHT` when ``done`` was given and the command was started without a
        task (a page-cache miss read on io_uring): ``done(result)`` is then called on the
        event loop once it completes; otherwise a :class:`Pending` to await, in a task,
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
            if done is not None and cdb[0] in _READS \
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
            asc = c.WRITE_ERROR if cdb and cdb[0] in _MEDIUM_WRITES else c.UNRECOVERED_READ_ERROR
        return self._check_condition(CheckCondition(key, asc))

    def _finish_at_once(self, cdb: bytes, nexus: Nexus, data: Buffer, files: bool,
                        budget: SessionBudget | None) -> SCSIResult | None:
        """A read whose data is in the page cache, or a write-back write of whole pages
        whose data came with the command, done with no task switch; None for anything
        else (another command, a unit attention, a reservation, an error to report, a
        page-cache miss, a write that would wait, no room in the budget)."""
        fields = self._plain_rw(cdb, nexus, _READS_WRITES, _INLINE_READ)
        if fields is None:
            return None
        offset, length, flags = fields
        op = cdb[0]
        if op in _READS:
            rng = self.backend.cached_range(offset, length) \
                if files and length >= SENDFILE_READ else None
            if rng is not None:
                result = SCSIResult(data=rng)
            else:
                if budget is not None and not budget.try_take(length):
                    return None
                buf = self._pool.take(length)
                if not self.backend.read_cached(offset, buf):
                    self._recycle(buf, budget)
                    return None
                result = SCSIResult(data=buf, release=partial(self._recycle, buf, budget))
            self.stats["reads"] += 1
            self.stats["bytes_read"] += length
            return result
        fua = bool(flags & 0x08) and op != Op.WRITE_6
        if fua or not self.mode.write_cache or self.read_only or self.mode.swp \
                or len(data) != length or length > _INLINE_WRITE or not self._writes.open:
            return None
        if not self.backend.write_cached(offset, memoryview(data)):
            return None
        self.stats["writes"] += 1
        self.stats["bytes_written"] += length
        return SCSIResult()

    def _plain_rw(self, cdb: bytes, nexus: Nexus, ops: Collection[int],
                  limit: int) -> tuple[int, int, int] | None:
        """(byte offset, byte length, flags) of a command in ``ops`` (READs, WRITEs)
        that needs none of ``execute``'s checks and answers: no unit attention or
        reservation, no protection bits, in range, of 1 byte to ``limit`` bytes.  None
        otherwise."""
        if not cdb or cdb[0] not in ops:
            return None
        st = self.nexuses.get(nexus)
        if st is not None and st.unit_attentions:
            return None
        res = self.reservations
        if res.spc2_holder is not None or res.pr_type:
            return None
        try:
            lba, n, flags = rw_fields(cdb)
        except CheckCondition:
            return None
        bs = self.block_size
        if flags & 0xE0 or not 0 < n * bs <= limit or lba + n > self.blocks \
                or n > self.geometry.max_transfer_blocks:
            return None
        return lba * bs, n * bs, flags

    def _recycle(self, buf: bytearray, budget: SessionBudget | None) -> None:
        """A read buffer was sent (or is not needed): back to the pool and the budget."""
        self._pool.give(buf)
        if budget is not None:
            budget.give(len(buf))

    def _start_read(self, cdb: bytes, nexus: Nexus, done: Callable[[SCSIResult], None],
                    budget: SessionBudget | None) -> bool:
        """Start a plain READ that missed the page cache on io_uring; ``done`` gets its
        result on the event loop, from the completion.  False (nothing started) for
        anything else, or without room in the budget."""
        fields = self._plain_rw(cdb, nexus, _READS, _URING_READ)
        ring = self._uring() if fields is not None else None
        if fields is None or ring is None:
            return False
        offset, length, _flags = fields
        if budget is not None and not budget.try_take(length):
            return False
        buf = self._pool.take(length)

        def finished(got: outcome.Outcome[int]) -> None:
            try:
                count = got.unwrap()
            except OSError as exc:
                self._recycle(buf, budget)
                done(self._medium_error(cdb, exc))
                return
            if count < length:  # the end of a backing file that shrank: zeros
                buf[count:] = bytes(length - count)
            self.stats["reads"] += 1
            self.stats["bytes_read"] += length
            done(SCSIResult(data=buf, release=partial(self._recycle, buf, budget)))

        if not ring.start_read(self._fd, buf, offset, finished):
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
        n = rw_fields(cdb)[1]
        if n > self.geometry.max_transfer_blocks:
            raise _invalid_cdb(_LENGTH_FIELD.get(len(cdb), 7 if len(cdb) < 12 else 10))

    def buffer_length(self, cdb: bytes) -> int:
        """How many bytes the command reads into a buffer of its own (a READ's data, the
        blocks VERIFY and ORWRITE read to compare or merge), for the caller's budget; 0
        for anything else (their buffers are small or the caller's write buffer)."""
        if not cdb:
            return 0
        op = cdb[0]
        try:
            if op in _READS or op == Op.ORWRITE_16:
                return rw_fields(cdb)[1] * self.block_size
            if op in _VERIFY:
                _lba, n, flags = rw_fields(cdb)
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
                raise _invalid_cdb()
            if op not in _TRANSFER_OPS:
                return None
            st = self.nexuses.get(nexus)
            res = self.reservations
            if (st is not None and st.unit_attentions) or res.spc2_holder is not None \
                    or res.pr_type:
                return None
            self._check_transfer(cdb)
            if op in _READS_WRITES:
                lba, n, flags = rw_fields(cdb)
                if flags & 0xE0:
                    raise _invalid_cdb(1)
                if op in _WRITES:
                    self._check_writable()
                self._check_range(lba, n)
        except CheckCondition as cc:
            return self._check_condition(cc)
        return None

    def _check_condition(self, cc: CheckCondition) -> SCSIResult:
        return SCSIResult(Status.CHECK_CONDITION, sense=cc.sense(self.mode.d_sense))

    async def _io(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _uring(self) -> Uring | None:
        """This trio run's io_uring for the backing file, or None to use threads."""
        if not self._ring_wanted:
            return None
        ring = self._ring
        if ring is not None and ring.token is trio.lowlevel.current_trio_token():
            return ring
        if ring is not None:  # made in an earlier trio run (tests)
            ring.close()
        self._ring = ring = open_uring()
        self._ring_wanted = ring is not None
        return ring

    async def _read_into(self, offset: int, buf: bytearray) -> None:
        """Fill ``buf`` from the backing store; zeros past its end (a file that shrank)."""
        ring = self._uring() if len(buf) <= _URING_READ else None
        if ring is not None and await ring.read(self._fd, buf, offset) == len(buf):
            return
        # no ring, or a short read (the end of a file that shrank): a thread does it
        await self._io(self.backend.read_into, offset, buf)

    async def _write_at(self, offset: int, data: Buffer, sync: bool) -> None:
        ring = self._uring()
        whole = _whole_bytearray(data)
        if ring is not None and whole is not None \
                and await ring.write(self._fd, whole, offset) == len(whole):
            if sync:
                await ring.fdatasync(self._fd)
            return
        # no ring, not a whole buffer, or a short write (rare): a thread writes it all
        await self._io(self.backend.write, offset, data, sync)

    async def _flush_backend(self) -> None:
        ring = self._uring()
        if ring is None:
            await self._io(self.backend.flush)
        elif not self.backend.read_only:
            await ring.fdatasync(self._fd)

    async def _execute(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        if not cdb:
            raise _invalid_cdb(0)
        op = cdb[0]
        st = self._state(nexus)
        if st.unit_attentions and op not in _NO_UA:
            ua = st.unit_attentions.pop(0)
            raise CheckCondition(SenseKey.UNIT_ATTENTION, ua)
        handler = _HANDLERS.get(op)
        if handler is None:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.INVALID_COMMAND_OPERATION_CODE,
                                 field_pointer=0)
        if op not in _ALWAYS:
            writes = op in _MEDIUM_WRITES or op in (
                Op.MODE_SELECT_6, Op.MODE_SELECT_10, Op.SYNCHRONIZE_CACHE_10,
                Op.SYNCHRONIZE_CACHE_16, Op.START_STOP_UNIT, Op.RESERVE_6)
            if op == Op.RESERVE_6:
                pass
            else:
                self.reservations.check_access(nexus, reads=not writes, writes=writes)
        if op in _TRANSFER_OPS:
            self._check_transfer(cdb)
        if op in _READ_THEN_WRITE:
            async with self._writes.exclusive():
                return await handler(self, cdb, data, nexus)
        if op in _MEDIUM_WRITES:
            async with self._writes.shared():
                return await handler(self, cdb, data, nexus)
        return await handler(self, cdb, data, nexus)

    # ---------------------------------------------------------------- helpers

    def _check_range(self, lba: int, n: int) -> None:
        if lba + n > self.blocks or lba > self.blocks:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.LBA_OUT_OF_RANGE)

    def _check_writable(self) -> None:
        if self.read_only or self.mode.swp:
            raise CheckCondition(SenseKey.DATA_PROTECT, c.WRITE_PROTECTED)

    def _alloc(self, cdb: bytes, start: int, end: int) -> int:
        return int.from_bytes(cdb[start:end], "big")

    # ---------------------------------------------------------------- reads and writes

    async def _read(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        lba, n, flags = rw_fields(cdb)
        if flags & 0xE0:
            raise _invalid_cdb(1)
        self._check_range(lba, n)
        if n == 0:
            return SCSIResult()
        bs = self.block_size
        length = n * bs
        if length > _INLINE_READ:  # rare sizes: a fresh buffer, not kept afterwards
            buf = bytearray(length)
            await self._read_into(lba * bs, buf)
            release = None
        else:
            buf = self._pool.take(length)
            if not self.backend.read_cached(lba * bs, buf):
                await self._read_into(lba * bs, buf)
            release = partial(self._pool.give, buf)
        self.stats["reads"] += 1
        self.stats["bytes_read"] += length
        return SCSIResult(data=buf, release=release)

    async def _write(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        lba, n, flags = rw_fields(cdb)
        if flags & 0xE0:
            raise _invalid_cdb(1)
        fua = bool(flags & 0x08) and cdb[0] != Op.WRITE_6
        return await self._write_blocks(lba, n, data, sync=fua or not self.mode.write_cache)

    async def _write_blocks(self, lba: int, n: int, data: Buffer, *, sync: bool) -> SCSIResult:
        """Write the blocks that both the CDB (``n``) and the data received cover."""
        self._check_writable()
        self._check_range(lba, n)
        bs = self.block_size
        blocks = min(n, len(data) // bs)
        if blocks:
            piece = memoryview(data)[: blocks * bs]
            inline = not sync and blocks * bs <= _INLINE_WRITE
            if not (inline and self.backend.write_cached(lba * bs, piece)):
                await self._write_at(lba * bs, piece, sync)
            self.stats["writes"] += 1
            self.stats["bytes_written"] += blocks * bs
        return SCSIResult()

    async def _verify(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        lba, n, flags = rw_fields(cdb)
        if flags & 0xE0:
            raise _invalid_cdb(1)
        bytchk = (flags >> 1) & 3
        if bytchk == 2:
            raise _invalid_cdb(1)
        self._check_range(lba, n)
        if bytchk == 0 or n == 0:
            return SCSIResult()
        bs = self.block_size
        medium = await self._io(self.backend.read, lba * bs, n * bs)
        expected = bytes(data) if bytchk == 1 else bytes(data[:bs]) * n
        if len(expected) < len(medium):
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.PARAMETER_LIST_LENGTH_ERROR)
        self._compare(medium, expected)
        return SCSIResult()

    @staticmethod
    def _compare(medium: bytes | bytearray, expected: bytes) -> None:
        if medium != expected[: len(medium)]:
            pairs = enumerate(zip(medium, expected, strict=False))
            offset = next(i for i, (a, b) in pairs if a != b)
            raise CheckCondition(SenseKey.MISCOMPARE, c.MISCOMPARE_DURING_VERIFY,
                                 information=offset)

    async def _write_verify(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        lba, n, flags = rw_fields(cdb)
        if flags & 0xE0 or (flags >> 1) & 3 in (2, 3):
            raise _invalid_cdb(1)
        # the medium is the backing store: verifying means writing through to it
        return await self._write_blocks(lba, n, data, sync=True)

    async def _orwrite(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        lba, n, flags = rw_fields(cdb)
        if flags & 0xE0:
            raise _invalid_cdb(1)
        self._check_writable()
        self._check_range(lba, n)
        bs = self.block_size
        if n == 0:
            return SCSIResult()
        # no other write runs meanwhile: _execute holds the write gate exclusive
        old = await self._io(self.backend.read, lba * bs, n * bs)
        mask = bytes(data[: n * bs]).ljust(n * bs, b"\0")
        new = (int.from_bytes(old, "big") | int.from_bytes(mask, "big")).to_bytes(n * bs, "big")
        await self._io(self.backend.write, lba * bs, new, not self.mode.write_cache)
        return SCSIResult()

    async def _compare_and_write(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        if len(cdb) < 16:
            raise _invalid_cdb()
        if cdb[1] & 0xE0:
            raise _invalid_cdb(1)
        lba = int.from_bytes(cdb[2:10], "big")
        n = cdb[13]
        self._check_writable()
        if n > self.geometry.max_compare_and_write:
            raise _invalid_cdb(13)
        self._check_range(lba, n)
        if n == 0:
            if len(data):
                raise _invalid_cdb(13)
            return SCSIResult()
        bs = self.block_size
        if len(data) < 2 * n * bs:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.INVALID_FIELD_IN_INFORMATION_UNIT)
        verify, new = bytes(data[: n * bs]), memoryview(data)[n * bs : 2 * n * bs]
        # no other write runs meanwhile: _execute holds the write gate exclusive
        medium = await self._io(self.backend.read, lba * bs, n * bs)
        self._compare(medium, verify)
        sync = bool(cdb[1] & 0x08) or not self.mode.write_cache
        await self._io(self.backend.write, lba * bs, new, sync)
        return SCSIResult()

    async def _write_same(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        op = cdb[0]
        if op == Op.WRITE_SAME_10:
            if len(cdb) < 10:
                raise _invalid_cdb()
            lba, n = int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[7:9], "big")
        else:
            if len(cdb) < 16:
                raise _invalid_cdb()
            lba, n = int.from_bytes(cdb[2:10], "big"), int.from_bytes(cdb[10:14], "big")
        flags = cdb[1]
        if flags & 0xE0:
            raise _invalid_cdb(1)
        if flags & 0x10:  # ANCHOR
            raise _invalid_cdb(1)
        unmap, ndob = bool(flags & 0x08), op == Op.WRITE_SAME_16 and bool(flags & 0x01)
        self._check_writable()
        if n == 0:
            n = self.blocks - lba if lba < self.blocks else 0
            if lba >= self.blocks:
                raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.LBA_OUT_OF_RANGE)
        self._check_range(lba, n)
        if n > self.geometry.max_write_same_blocks:
            raise _invalid_cdb(10 if op == Op.WRITE_SAME_16 else 7)
        bs = self.block_size
        if ndob:
            block = bytes(bs)
        else:
            if len(data) < bs:
                raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.INVALID_FIELD_IN_CDB)
            block = bytes(data[:bs])
        if unmap and self.geometry.can_unmap:
            # UNMAP=1: deallocate; with LBPRZ the blocks then read back as zeros.
            await self._io(self.backend.unmap, lba * bs, n * bs)
            return SCSIResult()
        await self._io(self._fill, lba * bs, n, block)
        return SCSIResult()

    def _fill(self, offset: int, n: int, block: bytes) -> None:
        chunk_blocks = max(1, (1 << 20) // len(block))
        chunk = block * chunk_blocks
        done = 0
        while done < n:
            k = min(chunk_blocks, n - done)
            self.backend.write(offset + done * len(block), chunk[: k * len(block)], sync=False)
            done += k
        if not self.mode.write_cache:
            self.backend.flush()

    async def _unmap(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        if len(cdb) < 10:
            raise _invalid_cdb()
        if cdb[1] & 0x01:  # ANCHOR
            raise _invalid_cdb(1)
        self._check_writable()
        plen = int.from_bytes(cdb[7:9], "big")
        if plen == 0:
            return SCSIResult()
        params = bytes(data[:plen])
        if plen < 8 or len(params) < 8:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.PARAMETER_LIST_LENGTH_ERROR)
        dlen = int.from_bytes(params[2:4], "big")
        descs = params[8 : 8 + dlen]
        if dlen % 16 or len(descs) < dlen:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.PARAMETER_LIST_LENGTH_ERROR)
        if dlen // 16 > self.geometry.max_unmap_descriptors:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.INVALID_FIELD_IN_PARAMETER_LIST,
                                 in_cdb=False)
        ranges = []
        for i in range(0, dlen, 16):
            lba = int.from_bytes(descs[i : i + 8], "big")
            n = int.from_bytes(descs[i + 8 : i + 12], "big")
            self._check_range(lba, n)
            if n > self.geometry.max_unmap_blocks:
                raise CheckCondition(SenseKey.ILLEGAL_REQUEST,
                                     c.INVALID_FIELD_IN_PARAMETER_LIST, in_cdb=False)
            if n:
                ranges.append((lba, n))
        bs = self.block_size
        if not self.geometry.can_unmap:
            return SCSIResult()
        for lba, n in ranges:
            await self._io(self.backend.unmap, lba * bs, n * bs)
        return SCSIResult()

    async def _sync_cache(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        if cdb[0] == Op.SYNCHRONIZE_CACHE_10:
            lba, n = int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[7:9], "big")
        else:
            lba, n = int.from_bytes(cdb[2:10], "big"), int.from_bytes(cdb[10:14], "big")
        self._check_range(lba, n)
        await self._flush_backend()
        return SCSIResult()

    async def _prefetch(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        if cdb[0] == Op.PRE_FETCH_10:
            lba, n = int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[7:9], "big")
        else:
            lba, n = int.from_bytes(cdb[2:10], "big"), int.from_bytes(cdb[10:14], "big")
        self._check_range(lba, n)
        return SCSIResult()

    async def _get_lba_status(self, cdb: bytes, nexus: Nexus) -> SCSIResult:
        lba = int.from_bytes(cdb[2:10], "big")
        alloc = int.from_bytes(cdb[10:14], "big")
        if lba >= self.blocks:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.LBA_OUT_OF_RANGE)
        bs = self.block_size
        mapped, length = await self._io(self.backend.mapped_extent, lba * bs)
        n = max(1, min(length // bs, self.blocks - lba, 0xFFFFFFFF))
        desc = lba.to_bytes(8, "big") + n.to_bytes(4, "big") + bytes([0 if mapped else 1, 0, 0, 0])
        out = (len(desc) + 4).to_bytes(4, "big") + bytes(4) + desc
        return SCSIResult(data=out[:alloc])

    # ---------------------------------------------------------------- informational

    async def _tur(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        return SCSIResult()

    async def _request_sense(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        if cdb[1] & 0x01:
            raise _invalid_cdb(1)
        st = self._state(nexus)
        if st.unit_attentions:
            sense = build_sense(SenseKey.UNIT_ATTENTION, st.unit_attentions.pop(0),
                                descriptor=self.mode.d_sense)
        else:
            sense = build_sense(SenseKey.NO_SENSE, c.NO_ADDITIONAL_SENSE,
                                descriptor=self.mode.d_sense)
        return SCSIResult(data=sense[: cdb[4]])

    async def _inquiry(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        alloc = self._alloc(cdb, 3, 5)
        evpd, page = cdb[1] & 0x01, cdb[2]
        if cdb[1] & 0xFE:
            raise _invalid_cdb(1)
        if not evpd:
            if page:
                raise _invalid_cdb(2)
            return SCSIResult(data=pages.standard_inquiry(self.read_only)[:alloc])
        out = pages.vpd_page(page, self.identity, self.geometry)
        if out is None:
            raise _invalid_cdb(2)
        return SCSIResult(data=out[:alloc])

    async def _read_capacity_10(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        return SCSIResult(data=pages.read_capacity_10(self.geometry))

    async def _service_action_in(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        if len(cdb) < 16:
            raise _invalid_cdb()
        sa = cdb[1] & 0x1F
        if sa == c.SA_READ_CAPACITY_16:
            alloc = int.from_bytes(cdb[10:14], "big")
            return SCSIResult(data=pages.read_capacity_16(self.geometry)[:alloc])
        if sa == c.SA_GET_LBA_STATUS:
            self.reservations.check_access(nexus, reads=True, writes=False)
            return await self._get_lba_status(cdb, nexus)
        raise _invalid_cdb(1)

    async def _maintenance_in(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        if len(cdb) < 12 or cdb[1] & 0x1F != c.SA_REPORT_SUPPORTED_OPCODES:
            raise _invalid_cdb(1)
        rctd, options = bool(cdb[2] & 0x80), cdb[2] & 0x07
        out = pages.report_supported_opcodes(
            options, cdb[3], int.from_bytes(cdb[4:6], "big"), rctd)
        if out is None:
            raise _invalid_cdb(2)
        return SCSIResult(data=out[: int.from_bytes(cdb[6:10], "big")])

    async def _report_luns(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        # Normally answered by the target, which knows every LU; this covers direct use.
        return SCSIResult(data=report_luns_data([self.number])[: self._alloc(cdb, 6, 10)])

    async def _mode_sense(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        six = cdb[0] == Op.MODE_SENSE_6
        dbd = bool(cdb[1] & 0x08)
        pc, page, subpage = cdb[2] >> 6, cdb[2] & 0x3F, cdb[3]
        alloc = cdb[4] if six else self._alloc(cdb, 7, 9)
        if pc == 3:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.SAVING_PARAMETERS_NOT_SUPPORTED,
                                 field_pointer=2)
        if subpage not in (0, 0xFF) or (subpage == 0xFF and page != 0x3F):
            raise _invalid_cdb(3)
        if page == 0x3F:
            body = b"".join(pages.mode_page(p, self.mode, pc) or b"" for p in pages.ALL_MODE_PAGES)
        else:
            one = pages.mode_page(page, self.mode, pc)
            if one is None:
                raise _invalid_cdb(2)
            body = one
        bdesc = b""
        if not dbd:
            blocks = min(self.blocks, 0xFFFFFF)
            bdesc = bytes([0]) + blocks.to_bytes(3, "big") + bytes([0]) + \
                self.block_size.to_bytes(3, "big")
        dsp = 0x10 | (0x80 if (self.read_only or self.mode.swp) else 0)  # DPOFUA, WP
        if six:
            total = 4 + len(bdesc) + len(body)
            head = bytes([total - 1, 0, dsp, len(bdesc)])
        else:
            total = 8 + len(bdesc) + len(body)
            head = (total - 2).to_bytes(2, "big") + bytes([0, dsp, 0, 0]) + \
                len(bdesc).to_bytes(2, "big")
        return SCSIResult(data=(head + bdesc + body)[:alloc])

    async def _mode_select(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        six = cdb[0] == Op.MODE_SELECT_6
        if cdb[1] & 0x01:  # SP
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.SAVING_PARAMETERS_NOT_SUPPORTED,
                                 field_pointer=1)
        params = bytes(data)
        if not params:
            return SCSIResult()
        hlen = 4 if six else 8
        if len(params) < hlen:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.PARAMETER_LIST_LENGTH_ERROR)
        bdl = params[3] if six else int.from_bytes(params[6:8], "big")
        pos = hlen + bdl
        new = pages.ModeState(self.mode.write_cache, self.mode.d_sense, self.mode.swp)
        while pos + 2 <= len(params):
            page, plen = params[pos] & 0x3F, params[pos + 1]
            body = params[pos : pos + 2 + plen]
            if len(body) < 2 + plen:
                raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.PARAMETER_LIST_LENGTH_ERROR)
            if page == 0x08 and plen >= 1:
                new.write_cache = bool(body[2] & 0x04)
            elif page == 0x0A and plen >= 3:
                new.d_sense = bool(body[2] & 0x04)
                new.swp = bool(body[4] & 0x08)
            elif pages.mode_page(page, self.mode, 0) is None:
                raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.INVALID_FIELD_IN_PARAMETER_LIST,
                                     field_pointer=pos, in_cdb=False)
            pos += 2 + plen
        changed = (new.write_cache, new.d_sense, new.swp) != (
            self.mode.write_cache, self.mode.d_sense, self.mode.swp)
        self.mode = new
        if changed:
            for other, st in self.nexuses.items():
                if other != nexus:
                    self._add_ua(st, c.MODE_PARAMETERS_CHANGED)
        return SCSIResult()

    async def _start_stop(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        return SCSIResult()

    async def _prevent_allow(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        self._state(nexus).prevent = bool(cdb[4] & 0x03)
        return SCSIResult()

    async def _read_defect_data(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        fmt = cdb[2] & 0x1F if cdb[0] == Op.READ_DEFECT_DATA_10 else cdb[1] & 0x1F
        if cdb[0] == Op.READ_DEFECT_DATA_10:
            return SCSIResult(data=bytes([0, fmt, 0, 0])[: self._alloc(cdb, 7, 9)])
        return SCSIResult(data=bytes([0, fmt, 0, 0, 0, 0, 0, 0])[: self._alloc(cdb, 6, 10)])

    # ---------------------------------------------------------------- reservations

    async def _reserve6(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        if cdb[1] & 0x01:  # third-party / extent: obsolete
            raise _invalid_cdb(1)
        self.reservations.reserve6(nexus)
        return SCSIResult()

    async def _release6(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        self.reservations.release6(nexus)
        return SCSIResult()

    async def _prin(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        sa = cdb[1] & 0x1F
        alloc = self._alloc(cdb, 7, 9)
        r = self.reservations
        if sa == 0:
            out = r.read_keys()
        elif sa == 1:
            out = r.read_reservation()
        elif sa == 2:
            out = r.report_capabilities()
        elif sa == 3:
            out = r.read_full_status({n: n.transport_id() for n in r.keys
                                      if isinstance(n, Nexus)})
        else:
            raise _invalid_cdb(1)
        return SCSIResult(data=out[:alloc])

    async def _prout(self, cdb: bytes, data: Buffer, nexus: Nexus) -> SCSIResult:
        sa, pr_type = cdb[1] & 0x1F, cdb[2] & 0x0F
        scope = cdb[2] >> 4
        if sa > 6:
            raise _invalid_cdb(1)
        if scope != 0 and sa in (1, 2, 4, 5):
            raise _invalid_cdb(2)
        plen = int.from_bytes(cdb[5:9], "big")
        if plen != 24:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, c.PARAMETER_LIST_LENGTH_ERROR)
        preempted = self.reservations.prout(nexus, sa, pr_type, bytes(data[:24]))
        for victim in preempted:
            st = self.nexuses.get(victim)  # type: ignore[call-overload]
            if st is not None:
                self._add_ua(st, c.REGISTRATIONS_PREEMPTED)
        return SCSIResult()

    async def flush(self) -> None:
        if not self.read_only:
            await self._flush_backend()

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        self.backend.close()


_Handler = Callable[[LogicalUnit, bytes, Buffer, Nexus], Awaitable[SCSIResult]]
_HANDLERS: dict[int, _Handler] = {}
for _ops, _fn in (
    (_READS, LogicalUnit._read), (_WRITES, LogicalUnit._write),
    (_VERIFY, LogicalUnit._verify), (_WRITE_VERIFY, LogicalUnit._write_verify),
    ({Op.ORWRITE_16}, LogicalUnit._orwrite), ({Op.COMPARE_AND_WRITE},
                                              LogicalUnit._compare_and_write),
    ({Op.WRITE_SAME_10, Op.WRITE_SAME_16}, LogicalUnit._write_same),
    ({Op.UNMAP}, LogicalUnit._unmap),
    ({Op.SYNCHRONIZE_CACHE_10, Op.SYNCHRONIZE_CACHE_16}, LogicalUnit._sync_cache),
    ({Op.PRE_FETCH_10, Op.PRE_FETCH_16}, LogicalUnit._prefetch),
    ({Op.TEST_UNIT_READY}, LogicalUnit._tur), ({Op.REQUEST_SENSE}, LogicalUnit._request_sense),
    ({Op.INQUIRY}, LogicalUnit._inquiry), ({Op.READ_CAPACITY_10}, LogicalUnit._read_capacity_10),
    ({Op.SERVICE_ACTION_IN_16}, LogicalUnit._service_action_in),
    ({Op.MAINTENANCE_IN}, LogicalUnit._maintenance_in),
    ({Op.REPORT_LUNS}, LogicalUnit._report_luns),
    ({Op.MODE_SENSE_6, Op.MODE_SENSE_10}, LogicalUnit._mode_sense),
    ({Op.MODE_SELECT_6, Op.MODE_SELECT_10}, LogicalUnit._mode_select),
    ({Op.START_STOP_UNIT}, LogicalUnit._start_stop),
    ({Op.PREVENT_ALLOW}, LogicalUnit._prevent_allow),
    ({Op.READ_DEFECT_DATA_10, Op.READ_DEFECT_DATA_12}, LogicalUnit._read_defect_data),
    ({Op.RESERVE_6}, LogicalUnit._reserve6), ({Op.RELEASE_6}, LogicalUnit._release6),
    ({Op.PERSISTENT_RESERVE_IN}, LogicalUnit._prin),
    ({Op.PERSISTENT_RESERVE_OUT}, LogicalUnit._prout),
):
    for _op in _ops:
        _HANDLERS[_op] = _fn
