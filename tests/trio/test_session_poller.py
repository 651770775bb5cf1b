"""A session whose socket a Poller serves: commands, the end of the connection, logout."""

from __future__ import annotations

import pytest
import trio

from blockbridge.initiator.errors import ConnectionLost
from blockbridge.poller import Poller
from tests.trio.test_session_target import (  # noqa: F401 - server is a fixture
    BS,
    connect,
    read10,
    server,
    write_read_in_flight,
)


async def until_polled(poller: Poller, fd: int) -> None:
    while fd not in poller._handlers:
        await trio.sleep(0.001)


@pytest.mark.parametrize("server", [{}, {"HeaderDigest": "CRC32C", "DataDigest": "CRC32C",
                                         "MaxRecvDataSegmentLength": "4096"}],
                         indirect=True)
async def test_commands_through_the_poller_then_logout_ends_the_reader(
        server: tuple[str, int]) -> None:  # noqa: F811
    poller = Poller()
    ended = trio.Event()
    with trio.fail_after(20):
        proposals = {"HeaderDigest": "CRC32C,None", "DataDigest": "CRC32C,None"}
        s = await connect(server, proposals=proposals)
        fd = s.stream.pollable
        assert fd is not None
        async with trio.open_nursery() as nursery:
            await nursery.start(poller.run)

            async def run() -> None:
                await s.run()
                ended.set()

            nursery.start_soon(run)
            await write_read_in_flight(s, 16)
            await until_polled(poller, fd)  # the reader moved to the poller
            assert await s.nop(b"ping") == b"ping"
            await s.logout()
            await ended.wait()  # the reader saw the end by itself
            assert fd not in poller._handlers
            poller.stop()


async def test_commands_fail_when_the_connection_dies_under_the_poller(
        server: tuple[str, int]) -> None:  # noqa: F811
    poller = Poller()
    with trio.fail_after(10):
        s = await connect(server)
        fd = s.stream.pollable
        assert fd is not None
        async with trio.open_nursery() as nursery:
            await nursery.start(poller.run)
            nursery.start_soon(s.run)
            r = await s.command(0, read10(0, 1), read_length=BS)
            assert r.status == 0
            await until_polled(poller, fd)
            await s.stream.stream.aclose()  # pull the plug under the session
            with pytest.raises(ConnectionLost):
                await s.command(0, read10(0, 1), read_length=BS)
            assert fd not in poller._handlers
            nursery.cancel_scope.cancel()
