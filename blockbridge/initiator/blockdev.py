"""A logical unit as a byte-addressed block device over a session."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import trio

from blockbridge.buffers import BufferPool
from blockbridge.iscsi.initiator_connection import Response
from blockbridge.iscsi.params import SessionParams
from blockbridge.iscsi.pdu import Buffer
from blockbridge.scsi import cdb
from blockbridge.scsi.changes import (
    Capacity,
    parse_read_capacity_10,
    parse_read_capacity_16,
    parse_report_luns,
)
from blockbridge.scsi.constants import SenseKey, Status

from .errors import ConnectionLost, InitiatorError, LunRemoved, SCSIError

log = logging.getLogger(__name__)

DISK = 0x00
MAX_IO = 1024 * 1024
MIN_SPLIT = 64 * 1024  # smaller bursts would cost more commands than the R2T they save
MAX_ZERO = 64 << 20  # the most one WRITE SAME zeroes: commands stay short (interruptible)


@dataclass
class LUNInfo:
    number: int
    device_type: int
    vendor: str = ""
    product: str = ""


@dataclass
class Counters:
    reads: int = 0
    writes: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    flushes: int = 0
    unmaps: int = 0
    zeroes: int = 0
    errors: int = 0


Started = Callable[[], None]  # abandons a command started without a task
ReadDone = Callable[[memoryview | None], None]
# a read whose buffer the caller keeps: the data (or None) and how to give the buffer back
HeldDone = Callable[[memoryview | None, Callable[[], None]], None]
WriteDone = Callable[[bool], None]


def _nothing() -> None:
    pass


class CommandChannel(Protocol):
    """What a block device needs from a session (a Session or a RecoveringSession)."""

    @property
    def params(self) -> SessionParams: ...

    def submit(self, lun: int, cdb: bytes,
              done: Callable[[Response | None, str | None], None], *,
              data_out: Buffer | None = None, read_length: int = 0,
              read_into: bytearray | None = None) -> Started | None: ...

    def push(self) -> None: ...

    async def command(self, lun: int, cdb: bytes, *, data_out: Buffer | None = None,
                      read_length: int = 0, read_into: bytearray | None = None
                      ) -> Response: ...


@dataclass
class BlockDevice:
    session: CommandChannel
    lun: int
    block_size: int = 512
    blocks: int = 0
    read_only: bool = False
    can_unmap: bool = False
    zeroes_after_unmap: bool = False
    unmap_granularity: int = 1
    can_write_same: bool = True  # until the LUN refuses WRITE SAME(16)
    max_write_same: int = 0  # blocks; 0: the LUN sets no limit
    can_get_lba_status: bool = False
    max_io: int = MAX_IO
    counters: Counters = field(default_factory=Counters)
    # told of every unit attention a command of this device reports (lun, sense data)
    on_attention: Callable[[int, bytes], None] | None = None
    commands: int = 0  # commands answered, for the idle check of live LUN changes
    removed: str | None = None  # why the device was closed: it refuses I/O from then on
    _capacity_16: bool = True  # READ CAPACITY (16) works (else (10), older targets)
    _rmw: trio.Lock = field(default_factory=trio.Lock)
    _pool: BufferPool = field(default_factory=BufferPool)
    _sent: list[bytearray] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.blocks * self.block_size

    async def _run(self, what: str, command: bytes, *, data_out: bytes | memoryview | None = None,
                   read_length: int = 0, read_into: bytearray | None = None,
                   probe: bool = False) -> Response:
        """Run a command, retried after a unit attention or BUSY; a failure raises
        SCSIError and counts as an error (not when ``probe`` asks whether the LUN has
        the command at all)."""
        for attempt in range(3):
            if self.removed is not None:
                raise LunRemoved(self.removed)
            r = await self.session.command(self.lun, command, data_out=data_out,
                                           read_length=read_length, read_into=read_into)
            self.commands += 1
            if r.status == Status.GOOD:
                return r
            err = SCSIError(r.status, r.sense, what)
            if err.unit_attention and self.on_attention is not None:
                self.on_attention(self.lun, r.sense)
            if (err.unit_attention or r.status == Status.BUSY) and attempt < 2:
                continue  # unit attentions report an event; the command itself may be retried
            if not (probe and err.key == SenseKey.ILLEGAL_REQUEST):
                self.counters.errors += 1
            raise err
        raise AssertionError("unreachable")

    @classmethod
    async def open(cls, session: CommandChannel, lun: int) -> BlockDevice:
        dev = cls(session, lun)
        cap = await dev._read_capacity()
        dev.blocks, dev.block_size = cap.blocks, cap.block_size
        lbpme, lbprz = cap.thin, cap.zeroes_after_unmap
        try:
            ms = await dev._run("MODE SENSE", cdb.mode_sense_6(0x3F, 255), read_length=255)
            dev.read_only = bool(bytes(ms.data)[2] & 0x80) if len(ms.data) > 2 else False
        except SCSIError:
            pass
        if lbpme:
            try:
                bl = await dev._run("INQUIRY", cdb.inquiry(64, 0xB0), read_length=64)
                b = bytes(bl.data)
                max_xfer = int.from_bytes(b[8:12], "big") * dev.block_size
                if max_xfer:
                    dev.max_io = min(dev.max_io, max_xfer)
                max_unmap = int.from_bytes(b[20:24], "big")
                dev.unmap_granularity = max(int.from_bytes(b[28:32], "big"), 1)
                dev.can_unmap = max_unmap > 0
                dev.zeroes_after_unmap = lbprz
                if len(b) >= 44:
                    dev.max_write_same = int.from_bytes(b[36:44], "big")
            except SCSIError:
                dev.can_unmap = False
        dev.can_get_lba_status = lbpme
        dev.max_io = min(dev.max_io, session.params.max_burst_length) // dev.block_size * \
            dev.block_size or dev.block_size
        return dev

    async def _read_capacity(self) -> Capacity:
        if self._capacity_16:
            try:
                r = await self._run("READ CAPACITY(16)", cdb.read_capacity_16(), read_length=32)
                return parse_read_capacity_16(r.data)
            except SCSIError as exc:  # older targets: READ CAPACITY(10), at most 2 TiB
                if exc.key != 0x5:
                    raise
        r = await self._run("READ CAPACITY(10)", cdb.read_capacity_10(), read_length=8)
        self._capacity_16 = False
        return parse_read_capacity_10(r.data)

    async def refresh_capacity(self) -> bool:
        """Read the capacity again (after CAPACITY DATA HAS CHANGED, or a rescan); True
        if the size or block size changed.  Commands already sent keep the old limits;
        later ones are checked against the new."""
        cap = await self._read_capacity()
        if (cap.blocks, cap.block_size) == (self.blocks, self.block_size):
            return False
        if cap.block_size != self.block_size:
            self.max_io = max(self.max_io // cap.block_size * cap.block_size, cap.block_size)
        self.blocks, self.block_size = cap.blocks, cap.block_size
        return True

    async def test_unit_ready(self) -> None:
        """TEST UNIT READY: a command that does nothing but report a unit attention."""
        await self._run("TEST UNIT READY", cdb.test_unit_ready())

    def close(self, reason: str) -> None:
        """The LUN is gone from the target: every later command fails with ``reason``
        (never reaches another LUN that takes its number later)."""
        self.removed = reason

    async def read(self, offset: int, length: int) -> memoryview:
        """``length`` bytes at ``offset`` (fewer at the end of the LUN), as a view of the
        buffer the data arrived in: no copy when one command covers the range.

        The view is valid until the next call to read(): FUSE copies the reply out as
        soon as the handler returns, so the buffer is then recycled for the next read
        (a cache-warm buffer is several times cheaper to fill than a fresh one)."""
        for buf in self._sent:
            self._pool.give(buf)
        self._sent.clear()
        if self.removed is not None:
            raise LunRemoved(self.removed)
        if offset >= self.size or length <= 0:
            return memoryview(b"")
        length = min(length, self.size - offset)
        bs = self.block_size
        first, last = offset // bs, (offset + length - 1) // bs
        skip = offset - first * bs
        total = (last - first + 1) * bs
        out: bytearray | None = None
        lba = first
        while lba <= last:
            n = min(last - lba + 1, self.max_io // bs)
            single = n * bs == total
            into = self._pool.take(total) if single else None
            r = await self._run("READ", cdb.read(lba, n), read_length=n * bs, read_into=into)
            data = r.data
            if r.received < n * bs:  # a short read: zeros, never a reused buffer's bytes
                if len(data) < n * bs:
                    data.extend(bytes(n * bs - len(data)))
                data[r.received : n * bs] = bytes(n * bs - r.received)
            if single:
                out = data
            else:
                if out is None:
                    out = bytearray(total)
                out[(lba - first) * bs : (lba - first + n) * bs] = memoryview(data)[: n * bs]
            lba += n
        assert out is not None
        self._sent.append(out)
        self.counters.reads += 1
        self.counters.bytes_read += length
        return memoryview(out)[skip : skip + length]

    # ---------------------------------------------------------------- without a task

    def start_read(self, offset: int, length: int, done: ReadDone) -> Started | None:
        """Start a read that one READ covers (whole blocks, within the LUN and ``max_io``)
        without a task: ``done(view)`` gets the data (valid until it returns), or
        ``done(None)`` if it did not work out (an error, a unit attention, a lost
        connection: the caller takes the ordinary way, ``read``, which knows what to do).
        Returns how to abandon it, or None if it was not started (the ordinary way too).
        The command goes out with the session's next ``push()``."""

        def deliver(view: memoryview | None, release: Callable[[], None]) -> None:
            done(view)
            release()  # the caller has copied it out by now

        return self.start_read_held(offset, length, deliver)

    def start_read_held(self, offset: int, length: int, done: HeldDone) -> Started | None:
        """``start_read`` whose data stays valid until the caller calls the release
        function that ``done`` gets with it (with None too: then it does nothing)."""
        bs = self.block_size
        if (self.removed is not None or offset % bs or length % bs or length <= 0
                or length > self.max_io or offset + length > self.size):
            return None
        pool = self._pool
        buf = pool.take(length)

        def completed(r: Response | None, error: str | None) -> None:
            if r is None or r.status != Status.GOOD or r.received < length:
                pool.give(buf)
                if r is not None:
                    self._noted(r)
                done(None, _nothing)
                return
            self.commands += 1
            self.counters.reads += 1
            self.counters.bytes_read += length
            done(memoryview(buf)[:length], partial(pool.give, buf))

        try:
            return self.session.submit(self.lun, cdb.read(offset // bs, length // bs),
                                       completed, read_length=length, read_into=buf)
        except ConnectionLost:
            pool.give(buf)
            return None

    def start_write(self, offset: int, data: memoryview, done: WriteDone) -> Started | None:
        """Start a write that one WRITE carries without an R2T round trip, without a
        task: ``done(True)`` once the target has it, ``done(False)`` if it did not work
        out (take the ordinary way, ``write``).  Returns how to abandon it, or None if
        it was not started.  ``data`` must stay unchanged until ``done`` is called."""
        bs = self.block_size
        n = len(data)
        if (self.removed is not None or self.read_only or offset % bs or n % bs or n <= 0
                or n > self.max_io or offset + n > self.size
                or n > max(self._unsolicited_bytes(), MIN_SPLIT)):
            return None
        lba = offset // bs
        if self._unmappable(lba, data):
            return None  # an UNMAP instead: the ordinary way

        def completed(r: Response | None, error: str | None) -> None:
            if r is None or r.status != Status.GOOD:
                if r is not None:
                    self._noted(r)
                done(False)
                return
            self.commands += 1
            self.counters.writes += 1
            self.counters.bytes_written += n
            done(True)

        try:
            return self.session.submit(self.lun, cdb.write(lba, n // bs), completed,
                                       data_out=data)
        except ConnectionLost:
            return None

    def _noted(self, r: Response) -> None:
        """A command started without a task ended without GOOD status: a unit attention
        still tells what it reports (the ordinary way retries the command itself)."""
        self.commands += 1
        err = SCSIError(r.status, r.sense, "command")
        if err.unit_attention and self.on_attention is not None:
            self.on_attention(self.lun, r.sense)

    # ---------------------------------------------------------------- with a task

    async def write(self, offset: int, data: bytes | memoryview) -> int:
        if self.read_only:
            raise InitiatorError("the LUN is read-only")
        view = memoryview(data).cast("B")
        if offset + len(view) > self.size:
            raise InitiatorError("write beyond the end of the LUN")
        bs = self.block_size
        if offset % bs or len(view) % bs:
            async with self._rmw:
                await self._write_partial(offset, view)
        else:
            await self._write_blocks(offset // bs, view)
        self.counters.writes += 1
        self.counters.bytes_written += len(view)
        return len(view)

    async def _write_partial(self, offset: int, view: memoryview) -> None:
        """Write bytes that do not start or end on a block boundary: read the block at
        each ragged edge (not the whole range) into a recycled buffer (not a fresh one,
        whose pages fault in one by one), put the bytes between them, write it all.  A
        large write from a buffer that is not page-aligned reaches a FUSE file this way:
        as requests of 1 MiB less the misalignment, then the few bytes left."""
        bs = self.block_size
        start = offset - offset % bs
        end = -(-(offset + len(view)) // bs) * bs
        if end - start <= 2 * bs:
            buf = bytearray(await self.read(start, end - start))
        else:
            # every byte is overwritten: by the edge blocks read, or by the data
            buf = self._pool.take(end - start)
            if offset % bs:
                buf[:bs] = await self.read(start, bs)
            if (offset + len(view)) % bs:
                buf[-bs:] = await self.read(end - bs, bs)
        buf[offset - start : offset - start + len(view)] = view
        await self._write_blocks(start // bs, memoryview(buf))
        self._pool.give(buf)  # the commands are done: nothing refers to it any more

    async def _write_blocks(self, lba: int, view: memoryview) -> None:
        """Write whole blocks.  A write larger than what the target accepts without an
        R2T round trip is sent as several commands of that size at once: each one carries
        all its data, and the target can store one while the next is still arriving."""
        bs = self.block_size
        step = self.max_io
        burst = self._unsolicited_bytes()
        if len(view) > burst >= MIN_SPLIT:
            step = min(step, burst)
        pieces = [(lba + off // bs, view[off : off + step]) for off in range(0, len(view), step)]
        if len(pieces) == 1:
            await self._write_piece(*pieces[0])
            return
        errors: list[InitiatorError] = []

        async def write_one(first: int, piece: memoryview) -> None:
            try:
                await self._write_piece(first, piece)
            except InitiatorError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for first, piece in pieces:
                nursery.start_soon(write_one, first, piece)
        if errors:
            raise errors[0]

    async def _write_piece(self, lba: int, piece: memoryview) -> None:
        if self._unmappable(lba, piece):
            await self.discard(lba * self.block_size, len(piece))
        else:
            await self._run("WRITE", cdb.write(lba, len(piece) // self.block_size),
                            data_out=piece)

    def _unsolicited_bytes(self) -> int:
        """The most data one WRITE of up to ``max_io`` bytes carries without waiting for
        an R2T, in whole blocks."""
        n = self.session.params.unsolicited_limit(self.max_io)[1]
        return n // self.block_size * self.block_size

    def _unmappable(self, lba: int, piece: memoryview) -> bool:
        """Aligned all-zero writes become UNMAP on thin LUNs that read back zeros."""
        g = self.unmap_granularity
        n = len(piece) // self.block_size
        if not (self.can_unmap and self.zeroes_after_unmap) or lba % g or n % g:
            return False
        return all_zero(piece)

    async def flush(self) -> None:
        await self._run("SYNCHRONIZE CACHE", cdb.synchronize_cache())
        self.counters.flushes += 1

    async def discard(self, offset: int, length: int) -> None:
        """Deallocate whole granules inside [offset, offset+length); no-op without UNMAP."""
        if not self.can_unmap or length <= 0:
            return
        bs, g = self.block_size, self.unmap_granularity
        first = -(-offset // bs)
        first = -(-first // g) * g
        last = (offset + length) // bs // g * g
        if last <= first:
            return
        ranges, lba = [], first
        while lba < last:
            n = min(last - lba, 0x100000 // g * g or g)
            ranges.append((lba, n))
            lba += n
        for i in range(0, len(ranges), 64):
            command, params = cdb.unmap(ranges[i : i + 64])
            await self._run("UNMAP", command, data_out=params)
        self.counters.unmaps += 1

    async def zero(self, offset: int, length: int) -> None:
        """Make a byte range read back as zeros without deallocating it: WRITE SAME(16)
        of a zero block (UNMAP bit clear) where the LUN has it, else writes of zeros."""
        if self.read_only:
            raise InitiatorError("the LUN is read-only")
        end = min(offset + length, self.size)
        if end <= offset:
            return
        bs = self.block_size
        first, last = -(-offset // bs) * bs, end // bs * bs
        if first >= last:
            await self.write(offset, _ZERO_BYTES[: end - offset])
        else:
            if offset < first:
                await self.write(offset, _ZERO_BYTES[: first - offset])
            await self._zero_blocks(first // bs, (last - first) // bs)
            if last < end:
                await self.write(last, _ZERO_BYTES[: end - last])
        self.counters.zeroes += 1

    async def _zero_blocks(self, lba: int, n: int) -> None:
        bs = self.block_size
        step = max(1, MAX_ZERO // bs)
        if self.max_write_same:
            step = min(step, self.max_write_same)
        while n > 0 and self.can_write_same:
            k = min(n, step)
            try:
                await self._run("WRITE SAME", cdb.write_same_16(lba, k),
                                data_out=_ZERO_BYTES[:bs], probe=True)
            except SCSIError as exc:
                if exc.key != SenseKey.ILLEGAL_REQUEST:
                    raise
                log.debug("LUN %d has no WRITE SAME(16) (%s): zeroing with writes", self.lun,
                         exc)
                self.can_write_same = False
                break
            lba, n = lba + k, n - k
        step = max(1, min(self.max_io, len(_ZERO_BYTES)) // bs)
        while n > 0:
            k = min(n, step)
            await self._run("WRITE", cdb.write(lba, k), data_out=_ZERO_BYTES[: k * bs])
            lba, n = lba + k, n - k

    async def lba_status(self, lba: int) -> tuple[int, int] | None:
        """(provisioning status, blocks from ``lba`` on with that status) by GET LBA
        STATUS: 0 mapped, 1 deallocated, 2 anchored; None where the LUN cannot say."""
        if not self.can_get_lba_status or lba >= self.blocks:
            return None
        try:
            r = await self._run("GET LBA STATUS", cdb.get_lba_status(lba, 1024),
                                read_length=1024, probe=True)
        except SCSIError as exc:
            if exc.key != SenseKey.ILLEGAL_REQUEST:
                raise
            log.debug("LUN %d has no GET LBA STATUS (%s): every block counts as data",
                     self.lun, exc)
            self.can_get_lba_status = False
            return None
        for first, count, status in cdb.parse_lba_status(bytes(r.data[: r.received])):
            if first <= lba < first + count:
                return status, first + count - lba
        return None


_ZERO_BYTES = memoryview(bytes(1 << 20))
_ZEROS = _ZERO_BYTES.cast("Q")


def all_zero(view: memoryview) -> bool:
    """Whether every byte is zero, without copying: data written by users almost always
    has a non-zero byte among the three looked at first, and the full comparison runs
    eight bytes at a time."""
    n = view.nbytes
    if not n:
        return True
    if view[0] or view[n - 1] or view[n // 2]:
        return False
    if n % 8:
        return view.tobytes() == bytes(n)
    zeros = _ZEROS if n <= _ZEROS.nbytes else memoryview(bytes(n)).cast("Q")
    return view.cast("Q") == zeros[: n // 8]


async def list_disk_luns(session: CommandChannel) -> list[LUNInfo]:
    """The LUNs a target reports, with their device type (0 = disk)."""
    r = await session.command(0, cdb.report_luns(), read_length=4096)
    if r.status != Status.GOOD:
        raise SCSIError(r.status, r.sense, "REPORT LUNS")
    luns = []
    for number in parse_report_luns(r.data):
        inq = await session.command(number, cdb.inquiry(96), read_length=96)
        if inq.status != Status.GOOD or len(inq.data) < 36:
            continue
        d = bytes(inq.data)
        if d[0] >> 5 != 0:
            continue  # no LU connected here
        luns.append(LUNInfo(number, d[0] & 0x1F, d[8:16].decode(errors="replace").strip(),
                            d[16:32].decode(errors="replace").strip()))
    return luns
