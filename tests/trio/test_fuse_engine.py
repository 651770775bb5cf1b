"""Our FUSE engine, with the test as the kernel: requests go over a SOCK_SEQPACKET socket
pair (one message per request, as /dev/fuse reads are), the LUNs are our target's SCSI
emulation in memory."""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
from blockbridge_target.backends.file import FileBackend
from blockbridge_target.lun import LogicalUnit, Nexus

from blockbridge.fuse import protocol as P
from blockbridge.fuse import readahead
from blockbridge.fuse.engine import FuseEngine
from blockbridge.fuse.lunfs import LunFS
from blockbridge.fuse.negotiation import ASYNC_READ, MAX_PAGES, Limits
from blockbridge.initiator.blockdev import BlockDevice
from blockbridge.iscsi.initiator_connection import Response
from blockbridge.iscsi.params import SessionParams

NEXUS = Nexus("iqn.2026-11.test:i", b"\x80\0\0\0\0\1", "iqn.2026-11.test:t")
TARGET = "iqn.2026-11.test:t"
SIZE = 8 << 20


class LunChannel:
    """A session that runs each command on a LogicalUnit in memory; ``stall`` makes it
    a target that stopped answering."""

    def __init__(self, lu: LogicalUnit) -> None:
        self.lu = lu
        self.params = SessionParams()
        self.stall = False
        self.commands: list[int] = []
        self.submitted = 0  # commands started without a task of the engine's
        self.lose_next = False
        self.delay = 0.0  # seconds each command takes
        self.pushes = 0

    async def command(self, lun: int, cdb: bytes, *, data_out: P.Buffer | None = None,
                      read_length: int = 0, read_into: bytearray | None = None) -> Response:
        self.commands.append(cdb[0])
        if self.stall:
            await trio.sleep_forever()
        await trio.sleep(self.delay)
        r = await self.lu.execute(cdb, bytes(data_out) if data_out is not None else b"", NEXUS)
        data = bytearray(bytes(r.data)[:read_length])  # type: ignore[arg-type]
        return Response(r.status, r.sense, data, received=len(data))

    def submit(self, lun: int, cdb: bytes, done: Callable[[Response | None, str | None], None],
               *, data_out: P.Buffer | None = None, read_length: int = 0,
               read_into: bytearray | None = None) -> Callable[[], None]:
        """The same without a task of the caller's: answered from a task of its own."""
        abandoned = False

        async def run() -> None:
            if self.lose_next:  # the connection went away before the answer
                self.lose_next = False
                done(None, "connection lost")
                return
            r = await self.command(lun, cdb, data_out=data_out, read_length=read_length)
            if abandoned:
                return
            if read_into is not None and len(read_into) >= len(r.data):
                read_into[: len(r.data)] = r.data
                r.data = read_into
            done(r, None)

        def abandon() -> None:
            nonlocal abandoned
            abandoned = True

        self.submitted += 1
        trio.lowlevel.spawn_system_task(run)
        return abandon

    def push(self) -> None:
        self.pushes += 1


class Kernel:
    """The kernel's side of the connection."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.unique = 100
        self.notifications: list[bytes] = []
        self.replies: dict[int, tuple[int, bytes]] = {}

    async def send(self, opcode: int, body: bytes = b"", nodeid: int = 1) -> int:
        self.unique += 1
        header = P.IN_HEADER.pack(40 + len(body), opcode, self.unique, nodeid, 0, 0, 1, 0, 0)
        await self.sock.send(header + body)
        return self.unique

    async def reply(self, unique: int) -> tuple[int, bytes]:
        while unique not in self.replies:
            raw = await self.sock.recv(2 << 20)
            length, err, got = P.OUT_HEADER.unpack_from(raw)
            assert length == len(raw)
            if got == 0:
                self.notifications.append(raw)
            else:
                self.replies[got] = (-err, raw[16:])
        return self.replies.pop(unique)

    async def call(self, opcode: int, body: bytes = b"", nodeid: int = 1) -> tuple[int, bytes]:
        with trio.fail_after(5):
            return await self.reply(await self.send(opcode, body, nodeid))


@pytest.fixture
async def mounted(tmp_path: Path) -> AsyncIterator[tuple[Kernel, LunFS, LunChannel, Path]]:
    backend = FileBackend(str(tmp_path / "d.img"), create_size=SIZE)
    channel = LunChannel(LogicalUnit(0, backend, target_name=TARGET))
    dev = await BlockDevice.open(channel, 0)
    fs = LunFS({TARGET: {0: dev}})
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    engine = FuseEngine(fs, ours.fileno(), Limits(max_write=256 << 10))
    kernel = Kernel(trio.socket.from_stdlib_socket(theirs))
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.serve)
        init = P.INIT_IN_COMPAT.pack(7, 38, 131072, ASYNC_READ | MAX_PAGES) + bytes(48)
        err, payload = await kernel.call(P.Opcode.INIT, init)
        assert err == 0 and struct.unpack_from("<II", payload) == (7, 38)
        yield kernel, fs, channel, tmp_path / "d.img"
        engine.stop()
    ours.close()
    theirs.close()


async def lun_inode(kernel: Kernel) -> int:
    err, entry = await kernel.call(P.Opcode.LOOKUP, TARGET.encode() + b"\0")
    assert err == 0
    err, entry = await kernel.call(P.Opcode.LOOKUP, b"lun0\0",
                                   nodeid=struct.unpack_from("<Q", entry)[0])
    assert err == 0
    return int(struct.unpack_from("<Q", entry)[0])


def rw_in(fh: int, offset: int, size: int) -> bytes:
    return P.READ_IN.pack(fh, offset, size, 0, 0, 0, 0)


async def write(kernel: Kernel, ino: int, offset: int, data: bytes) -> None:
    """In requests of 64 KiB (a socket message is smaller than a /dev/fuse request)."""
    for i in range(0, len(data), 65536):
        piece = data[i : i + 65536]
        err, out = await kernel.call(P.Opcode.WRITE, rw_in(ino, offset + i, len(piece)) + piece,
                                     ino)
        assert (err, P.WRITE_OUT.unpack(out)[0]) == (0, len(piece))


async def test_lookup_attributes_read_and_write(mounted: tuple[Kernel, LunFS, LunChannel, Path]
                                                ) -> None:
    kernel, _fs, channel, disk = mounted
    ino = await lun_inode(kernel)
    err, attr = await kernel.call(P.Opcode.GETATTR, P.GETATTR_IN.pack(0, 0, 0), nodeid=ino)
    fields = P.ATTR.unpack_from(attr, 16)
    assert err == 0 and fields[0] == ino and fields[1] == SIZE and fields[9] == 0o100600
    err, opened = await kernel.call(P.Opcode.OPEN, P.OPEN_IN.pack(2, 0), nodeid=ino)
    fh, flags, _ = P.OPEN_OUT.unpack(opened)
    assert err == 0 and flags == P.FOPEN_DIRECT_IO | P.FOPEN_PARALLEL_DIRECT_WRITES
    data = bytes(range(256)) * 256
    await write(kernel, fh, 4096, data)
    err, back = await kernel.call(P.Opcode.READ, rw_in(fh, 4096, len(data)), ino)
    assert err == 0 and back == data
    assert (await kernel.call(P.Opcode.FSYNC, P.FSYNC_IN.pack(fh, 0, 0), ino))[0] == 0
    assert disk.read_bytes()[4096 : 4096 + len(data)] == data
    err, out = await kernel.call(P.Opcode.READ, rw_in(fh, SIZE - 100, 4096), ino)
    assert err == 0 and len(out) == 100  # a short read at the end
    err, _ = await kernel.call(P.Opcode.WRITE, rw_in(fh, SIZE, 1) + b"x", ino)
    assert err == errno.ENOSPC
    # the plain write and the plain read went without a task of the engine's
    assert channel.submitted == 2 and channel.pushes >= 2


async def test_what_fails_without_a_task_runs_again_as_a_task(
        mounted: tuple[Kernel, LunFS, LunChannel, Path]) -> None:
    kernel, _fs, channel, disk = mounted
    ino = await lun_inode(kernel)
    data = b"q" * 8192
    channel.lose_next = True
    await write(kernel, ino, 0, data)
    assert disk.read_bytes()[:8192] == data
    channel.lose_next = True
    err, back = await kernel.call(P.Opcode.READ, rw_in(ino, 0, 8192), ino)
    assert (err, back) == (0, data)
    assert channel.submitted == 2  # both were tried without a task first
    assert channel.commands.count(0x2A) + channel.commands.count(0x8A) == 1  # one WRITE ran


async def test_directory_listing(mounted: tuple[Kernel, LunFS, LunChannel, Path]) -> None:
    kernel, *_ = mounted
    err, opened = await kernel.call(P.Opcode.OPENDIR, P.OPEN_IN.pack(0, 0))
    fh = P.OPEN_OUT.unpack(opened)[0]
    err, listing = await kernel.call(P.Opcode.READDIRPLUS, rw_in(fh, 0, 4096))
    assert err == 0 and TARGET.encode() in listing
    _ino, off, namelen, kind = P.DIRENT.unpack_from(listing, 128)
    assert (off, namelen, kind) == (1, len(TARGET), P.DT_DIR)
    err, rest = await kernel.call(P.Opcode.READDIR, rw_in(fh, 1, 4096))
    assert (err, rest) == (0, b"")


async def test_size_changes_are_refused_and_unknown_requests_get_enosys(
        mounted: tuple[Kernel, LunFS, LunChannel, Path]) -> None:
    kernel, *_ = mounted
    ino = await lun_inode(kernel)
    body = P.SETATTR_IN.pack(P.FATTR_SIZE, 0, 0, 12345, *[0] * 12)
    assert (await kernel.call(P.Opcode.SETATTR, body, ino))[0] == errno.EPERM
    assert (await kernel.call(P.Opcode.MKDIR, b"\0" * 8 + b"x\0"))[0] == errno.ENOSYS
    assert (await kernel.call(P.Opcode.READ, b"short", ino))[0] == errno.EINVAL
    assert (await kernel.call(P.Opcode.LOOKUP, b"nothing\0"))[0] == errno.ENOENT


async def test_punch_hole_unmaps_and_zero_range_zeroes(
        mounted: tuple[Kernel, LunFS, LunChannel, Path]) -> None:
    kernel, _fs, channel, disk = mounted
    ino = await lun_inode(kernel)
    data = b"\xa5" * (4 << 20)
    await write(kernel, ino, 0, data)
    allocated = disk.stat().st_blocks
    punch = P.FALLOC_FL_PUNCH_HOLE | P.FALLOC_FL_KEEP_SIZE
    body = P.FALLOCATE_IN.pack(ino, 1 << 20, 2 << 20, punch, 0)
    assert (await kernel.call(P.Opcode.FALLOCATE, body, ino))[0] == 0
    assert disk.stat().st_blocks <= allocated - (2 << 20) // 512
    assert 0x42 in channel.commands  # UNMAP
    content = disk.read_bytes()
    assert content[1 << 20 : 3 << 20] == bytes(2 << 20) and content[:1 << 20] == data[:1 << 20]
    channel.commands.clear()
    body = P.FALLOCATE_IN.pack(ino, 100, 5000, P.FALLOC_FL_ZERO_RANGE, 0)
    assert (await kernel.call(P.Opcode.FALLOCATE, body, ino))[0] == 0
    assert 0x93 in channel.commands and 0x42 not in channel.commands  # WRITE SAME(16)
    content = disk.read_bytes()
    assert content[100:5100] == bytes(5000) and content[:100] == data[:100]
    assert content[5100 : 6000] == data[5100:6000]
    body = P.FALLOCATE_IN.pack(ino, 0, 4096, 0, 0)  # plain allocation: not for a LUN
    assert (await kernel.call(P.Opcode.FALLOCATE, body, ino))[0] == errno.EOPNOTSUPP


async def test_seek_data_and_hole_follow_the_provisioning(
        mounted: tuple[Kernel, LunFS, LunChannel, Path]) -> None:
    kernel, *_ = mounted
    ino = await lun_inode(kernel)
    await write(kernel, ino, 2 << 20, b"\x01" * (1 << 20))

    async def seek(offset: int, whence: int) -> int | str:
        err, out = await kernel.call(P.Opcode.LSEEK, P.LSEEK_IN.pack(ino, offset, whence, 0),
                                     ino)
        return errno.errorcode[err] if err else P.LSEEK_OUT.unpack(out)[0]

    assert await seek(0, P.SEEK_DATA) == 2 << 20
    assert await seek(0, P.SEEK_HOLE) == 0
    assert await seek((2 << 20) + 5, P.SEEK_HOLE) == 3 << 20
    assert await seek(3 << 20, P.SEEK_DATA) == "ENXIO"
    assert await seek(SIZE, P.SEEK_HOLE) == "ENXIO"


async def test_an_interrupted_request_answers_eintr(
        mounted: tuple[Kernel, LunFS, LunChannel, Path]) -> None:
    kernel, _fs, channel, _ = mounted
    ino = await lun_inode(kernel)
    channel.stall = True  # the target stopped answering
    stuck = await kernel.send(P.Opcode.READ, rw_in(ino, 0, 4096), ino)
    with trio.move_on_after(0.2):
        await kernel.reply(stuck)
        raise AssertionError("a stalled read was answered")
    await kernel.send(P.Opcode.INTERRUPT, P.INTERRUPT_IN.pack(stuck))
    with trio.fail_after(5):
        assert (await kernel.reply(stuck))[0] == errno.EINTR
    channel.stall = False
    err, back = await kernel.call(P.Opcode.READ, rw_in(ino, 0, 4096), ino)
    assert (err, back) == (0, bytes(4096))  # the next request works


async def test_a_request_that_finishes_soon_after_an_interrupt_is_answered(
        mounted: tuple[Kernel, LunFS, LunChannel, Path]) -> None:
    # a caller that gets a signal it handles (qemu-img does, while it maps a file) must
    # not see EINTR from a request that was about to finish
    kernel, _fs, channel, disk = mounted
    ino = await lun_inode(kernel)
    channel.delay = 0.1
    slow = await kernel.send(P.Opcode.READ, rw_in(ino, 0, 4096), ino)
    await kernel.send(P.Opcode.INTERRUPT, P.INTERRUPT_IN.pack(slow))
    with trio.fail_after(5):
        err, back = await kernel.reply(slow)
    assert (err, back) == (0, disk.read_bytes()[:4096])


async def test_live_changes_are_notified(mounted: tuple[Kernel, LunFS, LunChannel, Path]
                                         ) -> None:
    kernel, fs, _channel, _ = mounted
    ino = await lun_inode(kernel)
    dev = fs.nodes[ino].device
    assert dev is not None
    fs.resized(TARGET, 0)
    fs.luns_changed(TARGET, {1: dev})
    with trio.fail_after(5):
        while len(kernel.notifications) < 4:
            await kernel.reply(await kernel.send(P.Opcode.STATFS))
    assert b"".join(P.notify_inval_inode(ino)) in kernel.notifications
    entries = [n for n in kernel.notifications if P.OUT_HEADER.unpack_from(n)[1] == 3]
    assert sorted(n[32:-1] for n in entries) == [b"lun0", b"lun1"]
    assert (await kernel.call(P.Opcode.READ, rw_in(ino, 0, 4096), ino))[0] == errno.EIO
    parent = fs.nodes[ino].parent
    err, entry = await kernel.call(P.Opcode.LOOKUP, b"lun1\0", parent)
    assert err == 0 and struct.unpack_from("<Q", entry)[0] != ino
    assert (await kernel.call(P.Opcode.LOOKUP, b"lun0\0", parent))[0] == errno.ENOENT


def read_in(fh: int, offset: int, size: int, flags: int = 0) -> bytes:
    return P.READ_IN.pack(fh, offset, size, 0, 0, flags, 0)


async def reads_ran(channel: LunChannel, n: int) -> None:
    """Until the target has run ``n`` READ(10)s (reads ahead run after their answer)."""
    with trio.fail_after(5):
        while channel.commands.count(0x28) < n:
            await trio.sleep(0.01)


async def read_two_chunks(kernel: Kernel, channel: LunChannel, ino: int, chunk: int) -> None:
    """Two reads in a row from the start: the third chunk is read ahead."""
    for i in range(2):
        assert (await kernel.call(P.Opcode.READ, read_in(ino, i * chunk, chunk), ino))[0] == 0
    await reads_ran(channel, 3)


async def test_a_sequential_reader_gets_its_next_read_ahead(
        mounted: tuple[Kernel, LunFS, LunChannel, Path]) -> None:
    kernel, _fs, channel, disk = mounted
    ino = await lun_inode(kernel)
    data = disk.read_bytes()
    chunk = 128 << 10
    for i in range(4):  # the second read on starts the next one: 4 asked, 3 ahead
        err, back = await kernel.call(P.Opcode.READ, read_in(ino, i * chunk, chunk), ino)
        assert err == 0 and back == data[i * chunk : (i + 1) * chunk]
    await reads_ran(channel, 5)  # the last read ahead is on its way
    assert channel.commands.count(0x28) == 5  # READ(10): 2 asked, 3 read ahead
    # a write drops what was read ahead: the next read sees the new data
    new = bytes([7]) * chunk
    await write(kernel, ino, 4 * chunk, new)
    err, back = await kernel.call(P.Opcode.READ, read_in(ino, 4 * chunk, chunk), ino)
    assert (err, back) == (0, new)


async def test_o_direct_readers_and_small_reads_get_no_read_ahead(
        mounted: tuple[Kernel, LunFS, LunChannel, Path]) -> None:
    kernel, _fs, channel, disk = mounted
    ino = await lun_inode(kernel)
    data = disk.read_bytes()
    for size, flags in ((128 << 10, os.O_DIRECT), (4096, 0)):
        channel.commands.clear()
        for i in range(4):
            err, back = await kernel.call(P.Opcode.READ, read_in(ino, i * size, size, flags),
                                          ino)
            assert err == 0 and back == data[i * size : (i + 1) * size]
        await trio.sleep(0.05)
        assert channel.commands.count(0x28) == 4


async def test_data_read_ahead_and_not_asked_for_soon_is_not_served(
        mounted: tuple[Kernel, LunFS, LunChannel, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel, _fs, channel, disk = mounted
    monkeypatch.setattr(readahead, "KEEP", 0.05)
    ino = await lun_inode(kernel)
    chunk = 64 << 10
    await read_two_chunks(kernel, channel, ino, chunk)
    await trio.sleep(0.2)  # meanwhile another initiator writes it
    new = bytes([9]) * chunk
    with disk.open("r+b") as f:
        f.seek(2 * chunk)
        f.write(new)
    err, back = await kernel.call(P.Opcode.READ, read_in(ino, 2 * chunk, chunk), ino)
    assert (err, back) == (0, new)


async def test_closing_the_file_lets_go_of_what_was_read_ahead(
        mounted: tuple[Kernel, LunFS, LunChannel, Path]) -> None:
    kernel, _fs, channel, disk = mounted
    ino = await lun_inode(kernel)
    data = disk.read_bytes()
    chunk = 64 << 10
    await read_two_chunks(kernel, channel, ino, chunk)
    err, _ = await kernel.call(P.Opcode.RELEASE, P.RELEASE_IN.pack(ino, 0, 0, 0), ino)
    assert err == 0
    err, back = await kernel.call(P.Opcode.READ, read_in(ino, 2 * chunk, chunk), ino)
    assert (err, back) == (0, data[2 * chunk : 3 * chunk])
    await reads_ran(channel, 5)  # read again, and the fourth read ahead
