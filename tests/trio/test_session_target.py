"""Our initiator session against our target, in one process over loopback TCP."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from blockbridge_target.backends.file import FileBackend
from blockbridge_target.lun import LogicalUnit
from blockbridge_target.server import TargetServer
from blockbridge_target.targets import TargetDef

from blockbridge.initiator.blockdev import BlockDevice
from blockbridge.initiator.errors import ConnectionLost
from blockbridge.initiator.session import Session
from blockbridge.iscsi.errors import LoginFailed
from blockbridge.iscsi.initiator_connection import InitiatorConnection
from blockbridge.iscsi.login import ChapCredentials
from tests.needs import needs

IQN = "iqn.2026-11.test:inproc"
INI = "iqn.2026-11.test:initiator"
BS = 512


def write10(lba: int, n: int) -> bytes:
    return bytes([0x2A, 0]) + lba.to_bytes(4, "big") + b"\0" + n.to_bytes(2, "big") + b"\0"


def read10(lba: int, n: int) -> bytes:
    return bytes([0x28, 0]) + lba.to_bytes(4, "big") + b"\0" + n.to_bytes(2, "big") + b"\0"


def record_places(monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> list[int]:
    """The sizes of the places that the placement method ``owner.name`` hands out, in
    order; the method keeps working."""
    sizes: list[int] = []
    real = getattr(owner, name)

    def place(self: object, bhs: bytes) -> memoryview | None:
        view: memoryview | None = real(self, bhs)
        if view is not None:
            sizes.append(view.nbytes)
        return view

    monkeypatch.setattr(owner, name, place)
    return sizes


@pytest.fixture
async def server(disk_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, int]]:
    operational = dict(getattr(request, "param", {}))
    write_cache = not operational.pop("write_through", False)
    lu = LogicalUnit(0, FileBackend(str(disk_path / "d.img"), create_size=16 << 20),
                     target_name=IQN, write_cache=write_cache)
    target = TargetDef(name=IQN, luns={0: lu}, operational=operational,
                       incoming={"alice": b"alice-secret-123"} if operational.get("chap") else {})
    srv = TargetServer([target])
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(srv.serve, [("127.0.0.1", 0)])
        yield addresses[0]
        srv.shutdown()


async def write_read_in_flight(s: Session, count: int) -> None:
    """COUNT writes of 32 KiB in flight together, each read back and compared."""
    blobs = {i: os.urandom(64 * BS) for i in range(count)}

    async def one(i: int) -> None:
        r = await s.command(0, write10(i * 64, 64), data_out=blobs[i])
        assert r.status == 0
        r = await s.command(0, read10(i * 64, 64), read_length=64 * BS)
        assert r.status == 0 and bytes(r.data) == blobs[i]

    async with trio.open_nursery() as inner:
        for i in blobs:
            inner.start_soon(one, i)


async def connect(addr: tuple[str, int], **kw: object) -> Session:
    return await Session.connect(addr[0], addr[1], initiator_name=INI, target_name=IQN,
                                 **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("server", [
    {},
    {"HeaderDigest": "CRC32C", "DataDigest": "CRC32C"},
    {"ImmediateData": "No", "InitialR2T": "Yes", "MaxBurstLength": "16384",
     "MaxRecvDataSegmentLength": "4096"},
    {"FirstBurstLength": "8192", "MaxXmitDataSegmentLength": "4096"},
], indirect=True)
async def test_write_read_many_in_flight(server: tuple[str, int]) -> None:
    with trio.fail_after(20):
        proposals = {"HeaderDigest": "CRC32C,None", "DataDigest": "CRC32C,None"}
        s = await connect(server, proposals=proposals)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.run)
            await write_read_in_flight(s, 24)
            assert await s.nop(b"ping") == b"ping"
            await s.logout()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("server", "commands"), [
    ({}, 1),  # FirstBurstLength and MaxRecvDataSegmentLength 1 MiB: one PDU carries it all
    ({"FirstBurstLength": "262144"}, 4),  # InitialR2T=No: four commands that carry all data
    ({"InitialR2T": "Yes", "FirstBurstLength": "65536"}, 16),  # immediate data only
    ({"ImmediateData": "No", "InitialR2T": "Yes"}, 1),  # everything waits for R2T anyway
    ({"FirstBurstLength": "8192"}, 1),  # too small a burst to be worth a command each
], indirect=["server"])
async def test_a_large_write_is_split_into_bursts_the_target_takes_unasked(
        server: tuple[str, int], commands: int, disk_path: Path) -> None:
    with trio.fail_after(20):
        s = await connect(server)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.run)
            dev = await BlockDevice.open(s, 0)
            data = os.urandom(1 << 20)
            before = s.stats["commands"]
            assert await dev.write(3 << 20, data) == len(data)
            assert s.stats["commands"] - before == commands
            assert bytes(await dev.read(3 << 20, len(data))) == data
            await s.logout()
            nursery.cancel_scope.cancel()
    with (disk_path / "d.img").open("rb") as f:
        f.seek(3 << 20)
        assert f.read(1 << 20) == data


async def test_send_targets_in_discovery_and_normal_sessions(server: tuple[str, int]) -> None:
    with trio.fail_after(10):
        d = await Session.connect(server[0], server[1], initiator_name=INI, target_name=None)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(d.run)
            found = await d.text([("SendTargets", "All")])
            assert ("TargetName", IQN) in found
            assert ("TargetAddress", f"127.0.0.1:{server[1]},1") in found
            await d.logout()
            s = await connect(server)
            nursery.start_soon(s.run)
            assert ("TargetName", IQN) in await s.text([("SendTargets", "")])
            await s.logout()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("server", [{"chap": "1"}], indirect=True)
async def test_chap_required(server: tuple[str, int]) -> None:
    with pytest.raises(LoginFailed, match="authentication failed"):
        await connect(server)
    with pytest.raises(LoginFailed, match="authentication failed"):
        await connect(server, credentials=ChapCredentials("alice", b"wrong-secret-99"))
    s = await connect(server, credentials=ChapCredentials("alice", b"alice-secret-123"))
    await s.stream.aclose()


async def test_unknown_target_is_not_found(server: tuple[str, int]) -> None:
    with pytest.raises(LoginFailed, match="not found"):
        await Session.connect(server[0], server[1], initiator_name=INI,
                              target_name="iqn.2026-11.test:nope")


async def test_pending_commands_fail_when_the_connection_dies(server: tuple[str, int]) -> None:
    with trio.fail_after(10):
        s = await connect(server)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.run)
            await s.stream.stream.aclose()  # pull the plug under the session
            with pytest.raises(ConnectionLost):
                await s.command(0, read10(0, 1), read_length=BS)
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("cdb", [
    # WRITE(16) of 2^32-1 blocks (2 TiB) with 512 bytes of data: the residual exceeds 32 bits
    bytes([0x8A, 0]) + (0).to_bytes(8, "big") + (0xFFFFFFFF).to_bytes(4, "big") + b"\0\0",
    # READ(16) likewise, with a small expected length
    bytes([0x88, 0]) + (0).to_bytes(8, "big") + (0xFFFFFFFF).to_bytes(4, "big") + b"\0\0",
])
async def test_huge_transfer_lengths_get_a_status_not_a_dropped_connection(
        server: tuple[str, int], cdb: bytes) -> None:
    with trio.fail_after(10):
        s = await connect(server)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.run)
            if cdb[0] == 0x8A:
                r = await s.command(0, cdb, data_out=b"\1" * BS)
            else:
                r = await s.command(0, cdb, read_length=BS)
            assert r.status == 0x02  # CHECK CONDITION: beyond the end of the LUN
            if cdb[0] == 0x8A:
                assert r.overflow and r.residual == 0xFFFFFFFF  # saturated, not wrapped
            else:
                assert r.underflow and r.residual == BS  # no data was sent
            ok = await s.command(0, read10(0, 1), read_length=BS)
            assert ok.status == 0 and len(ok.data) == BS
            nursery.cancel_scope.cancel()


async def test_commands_wait_for_a_full_command_window(disk_path: Path) -> None:
    """QueuedCommands 2: 40 concurrent reads queue behind MaxCmdSN and all complete."""
    lu = LogicalUnit(0, FileBackend(str(disk_path / "w.img"), create_size=1 << 20),
                     target_name=IQN)
    srv = TargetServer([TargetDef(name=IQN, luns={0: lu}, queued_commands=2)])
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            host, port = (await nursery.start(srv.serve, [("127.0.0.1", 0)]))[0]
            s = await connect((host, port))
            nursery.start_soon(s.run)
            statuses: list[int] = []

            async def one(i: int) -> None:
                r = await s.command(0, read10(i, 1), read_length=BS)
                statuses.append(r.status)

            async with trio.open_nursery() as readers:
                for i in range(40):
                    readers.start_soon(one, i)
            assert statuses == [0] * 40
            # the target really kept the window small
            assert s.conn.maxcmdsn - s.conn.expcmdsn < 2 + 1
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("offset", "final"), [(512, True), (0, True), (512, False)])
async def test_data_out_with_a_gap_or_ending_early_drops_the_connection(
        server: tuple[str, int], offset: int, final: bool) -> None:
    """Unsolicited Data-Out for a 4-block WRITE must start at offset 0 and run to the
    end without gaps; anything else would leave blocks of the buffer unwritten."""
    from blockbridge.iscsi import pdu as P
    from blockbridge.transport import ConnectionClosed

    with trio.fail_after(10):
        s = await connect(server)
        cmd = P.SCSICommand(itt=7, lun=0, cdb=write10(0, 4), expected_length=4 * BS,
                            cmdsn=s.cmdsn, expstatsn=s.expstatsn, write=True, final=False)
        out = P.DataOut(itt=7, lun=0, offset=offset, datasn=0, final=final,
                        data=b"\1" * BS)
        await s.stream.send_pdus([cmd, out])
        if not final:  # a gap: the rest follows, but the target must not wait for it
            await s.stream.send_pdu(P.DataOut(itt=7, lun=0, offset=offset + BS, datasn=1,
                                              final=True, data=b"\1" * (3 * BS - offset)))
        with pytest.raises(ConnectionClosed):
            while True:
                pdu = await s.stream.receive_pdu()
                assert not isinstance(pdu, P.SCSIResponse), "the write was accepted"


@pytest.mark.parametrize(("server", "from_file"), [
    ({}, True),
    ({"MaxXmitDataSegmentLength": "4096"}, True),  # many Data-In PDUs, each from the file
    ({"HeaderDigest": "CRC32C", "DataDigest": "CRC32C"}, False),  # digests need the data
], indirect=["server"])
async def test_reads_in_the_page_cache_are_sent_from_it(
        server: tuple[str, int], from_file: bool, disk_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    content = os.urandom(4 << 20)
    with (disk_path / "d.img").open("r+b") as f:  # written through the page cache
        f.write(content)
    sent: list[int] = []
    real_sendfile = os.sendfile

    def sendfile(out: int, in_: int, offset: int | None, count: int) -> int:
        n = real_sendfile(out, in_, offset, count)
        sent.append(n)
        return n

    monkeypatch.setattr(os, "sendfile", sendfile)
    with trio.fail_after(20):
        s = await connect(server, proposals={"HeaderDigest": "CRC32C,None",
                                             "DataDigest": "CRC32C,None"})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.run)
            r = await s.command(0, read10(100, 128), read_length=128 * BS)  # 64 KiB
            assert r.status == 0 and bytes(r.data) == content[100 * BS : 228 * BS]
            assert sent == []  # small reads are copied: cheaper than two system calls
            for lba, n in [(0, 2048), (7, 300), (8191 - 256, 256)]:
                r = await s.command(0, read10(lba, n), read_length=n * BS)
                assert r.status == 0
                assert bytes(r.data) == content[lba * BS : (lba + n) * BS]
            assert (sum(sent) == (2048 + 300 + 256) * BS) == from_file
            assert bool(sent) == from_file
            await s.logout()
            nursery.cancel_scope.cancel()


async def test_large_data_in_lands_in_the_commands_buffer(
        server: tuple[str, int], disk_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = os.urandom(4 << 20)
    with (disk_path / "d.img").open("r+b") as f:
        f.write(content)
    placed = record_places(monkeypatch, InitiatorConnection, "placement")
    with trio.fail_after(20):
        s = await connect(server)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.run)
            dev = await BlockDevice.open(s, 0)
            for offset in (0, 1 << 20, 3 << 20):
                assert bytes(await dev.read(offset, 1 << 20)) == \
                    content[offset : offset + (1 << 20)]
            assert bytes(await dev.read(5 * BS, 300 * BS)) == content[5 * BS : 305 * BS]
            assert placed  # Data-In after the first of a read are received in place
            await s.logout()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("server", [
    {},  # one WRITE each, its data in its one PDU
    {"FirstBurstLength": "262144"},  # four WRITEs each
    {"ImmediateData": "No", "InitialR2T": "Yes"},  # one Data-Out each
    {"write_through": True},  # run as tasks, from the buffer received into
    {"DataDigest": "CRC32C"},  # checked in the reader's buffer, then copied
], indirect=True)
async def test_large_writes_in_flight_together_land_whole(
        server: tuple[str, int], disk_path: Path) -> None:
    """Large writes at once and again into recycled buffers: every byte where it belongs
    (where the data is received is the machine's ``place``, tested in
    tests/unit/test_target_connection.py)."""
    blobs = [os.urandom(1 << 20) for _ in range(3)]
    with trio.fail_after(20):
        s = await connect(server, proposals={"DataDigest": "CRC32C,None"})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.run)
            dev = await BlockDevice.open(s, 0)
            async with trio.open_nursery() as writers:  # at once: buffers in use together
                for i, blob in enumerate(blobs):
                    writers.start_soon(dev.write, (2 * i + 1) << 20, blob)
            for i, blob in enumerate(blobs):  # and again, into recycled buffers
                assert await dev.write((2 * i) << 20, blob[::-1]) == len(blob)
            await s.logout()
            nursery.cancel_scope.cancel()
    with (disk_path / "d.img").open("rb") as f:
        for i, blob in enumerate(blobs):
            f.seek((2 * i) << 20)
            assert f.read(2 << 20) == blob[::-1] + blob


async def test_a_write_that_arrives_before_its_turn_runs_in_order(
        server: tuple[str, int], disk_path: Path) -> None:
    """A WRITE that arrives before its CmdSN is due waits and then runs with the rest of
    its data solicited (that it holds only the data it brought meanwhile is checked on the
    machine, in tests/unit/test_target_connection.py)."""
    from blockbridge.iscsi import pdu as P

    first, second, rest = (os.urandom(1 << 20) for _ in range(3))
    with trio.fail_after(10):
        s = await connect(server)
        later = P.SCSICommand(itt=2, cdb=write10(4096, 4096), expected_length=2 << 20,
                              cmdsn=s.cmdsn + 1, expstatsn=s.expstatsn, write=True,
                              data=second)
        due = P.SCSICommand(itt=1, cdb=write10(0, 2048), expected_length=1 << 20,
                            cmdsn=s.cmdsn, expstatsn=s.expstatsn, write=True, data=first)
        await s.stream.send_pdus([later, due])
        statuses: dict[int, int] = {}
        while len(statuses) < 2:
            pdu = await s.stream.receive_pdu()
            if isinstance(pdu, P.R2T):
                assert (pdu.itt, pdu.offset, pdu.length) == (2, 1 << 20, 1 << 20)
                await s.stream.send_pdu(P.DataOut(itt=2, ttt=pdu.ttt, offset=1 << 20,
                                                  final=True, data=rest))
            elif isinstance(pdu, P.SCSIResponse):
                statuses[pdu.itt] = pdu.status
    assert statuses == {1: 0, 2: 0}
    with (disk_path / "d.img").open("rb") as f:
        assert f.read(1 << 20) == first
        f.seek(2 << 20)
        assert f.read(2 << 20) == second + rest


@needs("root")
async def test_a_full_file_system_is_reported_as_out_of_space_and_the_session_lives_on(
        disk_path: Path) -> None:
    """A thin LUN on a file system that fills up: the write that finds no room fails
    with SPACE ALLOCATION FAILED (ENOSPC through FUSE), not a dropped connection, and
    the session goes on serving."""
    import errno
    import subprocess

    from blockbridge.fuse.errors import to_errno
    from blockbridge.initiator.errors import SCSIError

    small = disk_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(small)], check=True)
    lu: LogicalUnit | None = None
    try:
        lu = LogicalUnit(0, FileBackend(str(small / "thin.img"), create_size=8 << 20),
                         target_name=IQN)
        srv = TargetServer([TargetDef(name=IQN, luns={0: lu})])
        blobs = [os.urandom(1 << 20) for _ in range(8)]
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                addr = (await nursery.start(srv.serve, [("127.0.0.1", 0)]))[0]
                s = await connect(addr)
                nursery.start_soon(s.run)
                dev = await BlockDevice.open(s, 0)
                written = 0
                with pytest.raises(SCSIError) as failed:
                    for i, blob in enumerate(blobs):
                        await dev.write(i << 20, blob)
                        written += 1
                assert 1 <= written < 8
                assert failed.value.out_of_space and to_errno(failed.value) == errno.ENOSPC
                assert "storage is full" in str(failed.value)
                for i in range(written):  # what was acknowledged is there
                    assert bytes(await dev.read(i << 20, 1 << 20)) == blobs[i]
                await s.logout()
                srv.shutdown()
    finally:
        if lu is not None:
            lu.close()
        subprocess.run(["umount", "--lazy", str(small)], check=True)


async def test_unaligned_writes_read_only_their_ragged_edges(
        server: tuple[str, int], disk_path: Path) -> None:
    """Writes that start or end inside a block keep the rest of those blocks, and read
    no more than the two edge blocks (a 1 MiB write from an unaligned buffer reaches FUSE
    as 1 MiB less a few bytes, then the few bytes)."""
    import random

    rng = random.Random(7)
    model = bytearray(os.urandom(8 << 20))
    with (disk_path / "d.img").open("r+b") as f:
        f.write(model)
    cases = [(2 << 20, (1 << 20) - 48), ((3 << 20) - 48, 48), (5, 3), (BS - 1, 2),
             (BS * 7 + 100, BS * 3)]
    cases += [(rng.randrange(0, 7 << 20), rng.randrange(1, 1 << 20)) for _ in range(40)]
    with trio.fail_after(30):
        s = await connect(server)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.run)
            dev = await BlockDevice.open(s, 0)
            for offset, length in cases:
                data = os.urandom(length)
                before = dev.counters.bytes_read
                assert await dev.write(offset, data) == length
                model[offset : offset + length] = data
                assert dev.counters.bytes_read - before <= 2 * BS
            assert bytes(await dev.read(0, 8 << 20)) == model
            await s.logout()
            nursery.cancel_scope.cancel()
