"""A running target under hostile connections and many sessions: the daemon stays up, its
memory stays bounded, and healthy sessions doing verified I/O see no error and lose nothing.

Short runs here; ``bench/soak.py`` runs the same load for minutes."""

from __future__ import annotations

import random
from pathlib import Path

import trio

from blockbridge.initiator.session import Session
from blockbridge.iscsi import pdu as P
from blockbridge.iscsi.framing import encode_bytes
from blockbridge.scsi import cdb
from tests.faults.live import HostileStats, VerifiedDisk, healthy_sessions, hostile_client

from .daemons import RunningTarget, our_target

HEALTHY = "iqn.2026-11.test:healthy"
HOSTILE = "iqn.2026-11.test:hostile"


# Every attacker comes from 127.0.0.1: without these, the login brake and the per-address
# cap (tested on their own elsewhere) would hold most of them at login, and the fuzzing
# would reach the full-feature phase only a few times.
FUZZ_LIMITS = ("--login-brake", "0", "--max-logins-per-address", "64")


def config(tmp_path: Path, size: int) -> Path:
    files = {}
    for name in ("healthy", "hostile0", "hostile1"):
        files[name] = tmp_path / f"{name}.img"
        with files[name].open("wb") as f:
            f.truncate(size)
    conf = tmp_path / "ietd.conf"
    conf.write_text(
        f"Target {HEALTHY}\n    Lun 0 Path={files['healthy']},Type=fileio\n"
        f"Target {HOSTILE}\n    HeaderDigest CRC32C,None\n    DataDigest CRC32C,None\n"
        f"    Lun 0 Path={files['hostile0']},Type=fileio\n"
        f"    Lun 1 Path={files['hostile1']},Type=fileio\n")
    return conf


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def run_load(target: RunningTarget, *, attackers: int, sessions: int, region: int,
             seconds: float) -> tuple[HostileStats, list[VerifiedDisk]]:
    stats = HostileStats()

    async def main() -> list[VerifiedDisk]:
        async with trio.open_nursery() as nursery:
            for _ in range(attackers):
                nursery.start_soon(hostile_client, target.host, target.port, HOSTILE,
                                   random.randrange(1 << 30), seconds, stats)
            return await healthy_sessions(target.host, target.port, HEALTHY,
                                          sessions=sessions, region=region, duration=seconds)

    return stats, trio.run(main)


def test_live_fuzz_with_a_healthy_session(tmp_path: Path) -> None:
    conf = config(tmp_path, 64 << 20)
    with our_target(["-c", str(conf), "--portal", "127.0.0.1:0", *FUZZ_LIMITS],
                    tmp_path) as target:
        before = rss_kib(target.process.pid)
        stats, disks = run_load(target, attackers=4, sessions=1, region=16 << 20, seconds=20)
        assert target.process.poll() is None, "the target died under fuzzing"
        growth = rss_kib(target.process.pid) - before
        log = target.log()
    assert disks[0].written > 16 << 20 and disks[0].verified > 16 << 20
    assert stats.connections > 50, stats
    assert sum(stats.by_kind.get(k, 0) for k in ("commands", "commands-with-digests")) > 10
    assert "dropping connection" in log
    assert "Traceback" not in log and "internal error" not in log, log[-4000:]
    assert growth < 64 << 10, f"target memory grew by {growth} KiB"
    assert_on_disk(tmp_path / "healthy.img", disks)


def test_32_sessions_of_verified_io_at_once(tmp_path: Path) -> None:
    conf = config(tmp_path, 128 << 20)
    with our_target(["-c", str(conf), "--portal", "127.0.0.1:0", *FUZZ_LIMITS],
                    tmp_path) as target:
        _, disks = run_load(target, attackers=0, sessions=32, region=4 << 20, seconds=10)
        log = target.log()
    assert len(disks) == 32 and all(d.verified >= d.length for d in disks)
    assert log.count("logged in to") == 32
    assert "Traceback" not in log
    assert_on_disk(tmp_path / "healthy.img", disks)


def assert_on_disk(image: Path, disks: list[VerifiedDisk]) -> None:
    """What the sessions wrote is in the backing file, read without iSCSI in between
    (the target has exited, after its final sync)."""
    with image.open("rb") as f:
        for d in disks:
            f.seek(d.start)
            assert f.read(d.length) == d.shadow, f"region at {d.start} differs on disk"


def test_an_initiator_that_does_not_read_cannot_grow_the_target(tmp_path: Path) -> None:
    # Reads served from the page cache are answered at once, without a task that waits
    # for its send: the target must stop taking commands once their answers pile up.
    conf = config(tmp_path, 8 << 20)
    with our_target(["-c", str(conf), "--portal", "127.0.0.1:0", *FUZZ_LIMITS],
                    tmp_path) as target:
        (tmp_path / "healthy.img").read_bytes()  # in the page cache: the fast path
        before = rss_kib(target.process.pid)

        async def flood() -> int:
            s = await Session.connect(target.host, target.port,
                                      initiator_name="iqn.2026-11.test:deaf",
                                      target_name=HEALTHY)
            raw = s.stream.stream
            sent = 0
            with trio.move_on_after(5):
                while True:  # 1 MiB reads; nothing of the answers is read
                    cmd = P.SCSICommand(
                        itt=sent, lun=P.encode_lun(0), cdb=cdb.read(sent % 8 * 2048, 2048),
                        expected_length=1 << 20, cmdsn=(s.cmdsn + sent) & 0xFFFFFFFF,
                        expstatsn=s.expstatsn, read=True, final=True)
                    await raw.send_all(encode_bytes(cmd))
                    sent += 1
            await raw.aclose()
            return sent

        sent = trio.run(flood)
        growth = rss_kib(target.process.pid) - before
        assert target.process.poll() is None
    assert sent > 8  # the target did take commands before it pushed back
    assert growth < 48 << 10, f"target memory grew by {growth} KiB for {sent} unread reads"
