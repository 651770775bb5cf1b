"""The target with a Poller, as the daemon runs: commands of every kind (answered in
place, on io_uring, in worker threads, as tasks), text and logout, and a lost
connection."""

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

from blockbridge.initiator.errors import ConnectionLost
from blockbridge.poller import Poller
from tests.trio.test_session_target import BS, IQN, connect, read10, write10


@pytest.fixture
async def polled(disk_path: Path, request: pytest.FixtureRequest
                 ) -> AsyncIterator[tuple[tuple[str, int], LogicalUnit]]:
    operational = dict(getattr(request, "param", {}))
    lu = LogicalUnit(0, FileBackend(str(disk_path / "d.img"), create_size=16 << 20),
                     target_name=IQN)
    srv = TargetServer([TargetDef(name=IQN, luns={0: lu}, operational=operational)])
    srv.poll = True
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(srv.serve, [("127.0.0.1", 0)])
        yield addresses[0], lu
        srv.shutdown()


def served_by_poller() -> int:
    poller = Poller.current.get()
    assert poller is not None
    return len(poller._handlers)


@pytest.mark.parametrize("polled", [{}, {"HeaderDigest": "CRC32C", "DataDigest": "CRC32C",
                                         "ImmediateData": "No"}], indirect=True)
async def test_every_kind_of_command_is_answered_through_the_poller(
        polled: tuple[tuple[str, int], LogicalUnit]) -> None:
    addr, lu = polled
    with trio.fail_after(30):
        proposals = {"HeaderDigest": "CRC32C,None", "DataDigest": "CRC32C,None"}
        s = await connect(addr, proposals=proposals)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.run)
            blobs = {i: os.urandom(256 * BS) for i in range(8)}  # 128 KiB each

            async def one(i: int) -> None:
                r = await s.command(0, write10(i * 256, 256), data_out=blobs[i])
                assert r.status == 0
                for n in (8, 256):  # 4 KiB (io_uring when cold), 128 KiB (a thread)
                    r = await s.command(0, read10(i * 256, n), read_length=n * BS)
                    assert r.status == 0 and bytes(r.data) == blobs[i][: n * BS]

            for cold in (False, True):
                if cold:
                    backend = lu.backend
                    assert isinstance(backend, FileBackend)
                    os.fsync(backend.fd)
                    os.posix_fadvise(backend.fd, 0, 0, os.POSIX_FADV_DONTNEED)
                async with trio.open_nursery() as inner:
                    for i in blobs:
                        inner.start_soon(one, i)
            assert served_by_poller() >= 2  # the connection's socket and the session's
            assert await s.nop(b"ping") == b"ping"
            assert await s.text([("SendTargets", "All")])
            await s.logout()
            nursery.cancel_scope.cancel()


async def test_a_connection_lost_under_the_poller_ends_cleanly(
        polled: tuple[tuple[str, int], LogicalUnit]) -> None:
    addr, _lu = polled
    with trio.fail_after(20):
        s = await connect(addr)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.run)
            r = await s.command(0, read10(0, 8), read_length=8 * BS)
            assert r.status == 0
            before = served_by_poller()
            await s.stream.stream.aclose()  # pull the plug under both ends
            with pytest.raises(ConnectionLost):
                await s.command(0, read10(0, 8), read_length=8 * BS)
            while served_by_poller() >= before:  # the target let go of its socket too
                await trio.sleep(0.01)
            s2 = await connect(addr)  # and serves the next one
            nursery.start_soon(s2.run)
            r = await s2.command(0, read10(0, 8), read_length=8 * BS)
            assert r.status == 0
            await s2.logout()
            nursery.cancel_scope.cancel()
