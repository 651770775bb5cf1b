"""Live LUN changes end to end in one process: our target reloads, our initiator's
block devices follow through the unit attentions, without I/O of their own."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from blockbridge_target.backends.file import FileBackend
from blockbridge_target.lun import LogicalUnit
from blockbridge_target.server import TargetServer
from blockbridge_target.targets import TargetDef

from blockbridge.initiator.blockdev import BlockDevice
from blockbridge.initiator.errors import LunRemoved
from blockbridge.initiator.live import LiveLuns
from blockbridge.initiator.session import Session

IQN = "iqn.2026-11.test:live-inproc"
MiB = 1 << 20


@dataclass
class Listener:
    """Records what the file system would be told."""

    resizes: list[int] = field(default_factory=list)
    changes: list[list[int]] = field(default_factory=list)
    event: trio.Event = field(default_factory=trio.Event)

    def resized(self, target: str, lun: int) -> None:
        assert target == IQN
        self.resizes.append(lun)
        self.event.set()

    def luns_changed(self, target: str, luns: dict[int, BlockDevice]) -> None:
        assert target == IQN
        self.changes.append(sorted(luns))
        self.event.set()

    async def next(self) -> None:
        with trio.fail_after(5):
            await self.event.wait()
        self.event = trio.Event()


def target(disks: dict[int, Path]) -> TargetDef:
    return TargetDef(IQN, {n: LogicalUnit(n, FileBackend(str(p)), target_name=IQN)
                           for n, p in disks.items()})


@dataclass
class Setup:
    server: TargetServer
    live: LiveLuns
    rec: Listener
    disks: dict[int, Path]


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    disks = {n: tmp_path / f"d{n}.img" for n in range(3)}
    for d in disks.values():
        d.write_bytes(bytes(MiB))
    server = TargetServer([target({0: disks[0], 1: disks[1]})])
    async with trio.open_nursery() as nursery:
        (host, port), *_ = await nursery.start(server.serve, [("127.0.0.1", 0)])
        s = await Session.connect(host, port, initiator_name="iqn.2026-11.test:ini",
                                  target_name=IQN)
        nursery.start_soon(s.run)
        devices = {n: await BlockDevice.open(s, n) for n in (0, 1)}
        live = LiveLuns(IQN, s, devices, idle_check=0.1)
        rec = Listener()
        live.listener = rec
        await nursery.start(live.run)
        yield Setup(server, live, rec, disks)
        await s.logout()
        server.shutdown()
        nursery.cancel_scope.cancel()


async def test_a_grown_lun_is_resized_without_io(setup: Setup) -> None:
    dev = setup.live.devices[0]
    os.truncate(setup.disks[0], 65 * MiB)
    setup.server.reload([target({0: setup.disks[0], 1: setup.disks[1]})], {}, None)
    await setup.rec.next()  # the idle check's TEST UNIT READY saw the attention
    assert setup.rec.resizes == [0] and dev.size == 65 * MiB
    await dev.write(64 * MiB, b"\x42" * 4096)  # the new blocks are usable
    assert bytes(await dev.read(64 * MiB, 4096)) == b"\x42" * 4096
    assert await setup.live.rescan() == []  # nothing left to find


async def test_luns_added_and_removed(setup: Setup) -> None:
    gone = setup.live.devices[1]
    setup.server.reload([target({0: setup.disks[0], 2: setup.disks[2]})], {}, None)
    await setup.rec.next()
    assert setup.rec.changes == [[0, 2]]
    assert sorted(setup.live.devices) == [0, 2]
    assert setup.live.devices[2].size == MiB
    with pytest.raises(LunRemoved, match="LUN 1 was removed from the target"):
        await gone.read(0, 512)
    await setup.live.devices[2].write(0, b"\x17" * 512)
    assert setup.disks[2].read_bytes()[:512] == b"\x17" * 512


async def test_rescan_finds_a_change_the_target_did_not_report(setup: Setup) -> None:
    os.truncate(setup.disks[1], 2 * MiB)  # no reload: our target reads sizes on reload only
    assert await setup.live.rescan() == []
    setup.server.targets[IQN].luns[1].adopt(LogicalUnit(1, FileBackend(str(setup.disks[1])),
                                                        target_name=IQN))  # no attention
    assert await setup.live.rescan() == [f"{IQN}: LUN 1 is now {2 * MiB} bytes (was {MiB})"]
    assert setup.rec.resizes == [1]


async def test_after_a_reconnection_everything_is_read_again(setup: Setup) -> None:
    """A new session has no attentions for what changed while it was away: the mount
    calls request_all() after each reconnection."""
    os.truncate(setup.disks[0], 3 * MiB)
    setup.server.targets[IQN].luns[0].adopt(LogicalUnit(0, FileBackend(str(setup.disks[0])),
                                                        target_name=IQN))  # no attention
    setup.live.request_all()
    await setup.rec.next()
    assert setup.rec.resizes == [0] and setup.live.devices[0].size == 3 * MiB
