"""A running target against initiators that ask for memory and never use it: writes whose
data never comes, reads whose answers are never read, transfers longer than the Block
Limits page allows.  The target's memory stays within its budgets, the tasks end after
the Data-Out timeout, and a healthy session meanwhile sees no error."""

from __future__ import annotations

import os
import time
from contextlib import AbstractContextManager
from pathlib import Path

import trio

from blockbridge.initiator.session import Session
from blockbridge.iscsi import pdu as P
from blockbridge.iscsi.framing import encode_bytes
from blockbridge.scsi.constants import (
    INITIATOR_RESPONSE_TIMEOUT,
    INVALID_FIELD_IN_CDB,
    SenseKey,
    Status,
)
from blockbridge.scsi.sense import parse_sense
from tests.faults.live import healthy_sessions

from .daemons import RunningTarget, our_target

IQN = "iqn.2026-11.test:memory"
MiB = 1 << 20
TIMEOUT = 2.0  # the Data-Out timeout the target runs with here


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def tmpfs_dir(tmp_path: Path) -> Path:
    """A directory on a tmpfs where there is one (reads of it take other paths than a
    disk's: no RWF_NOWAIT, no sendfile)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        d = shm / f"blockbridge-test-{os.getpid()}-{time.monotonic_ns()}"
        d.mkdir()
        return d
    return tmp_path


def start(disk: Path, tmp_path: Path, *extra: str) -> AbstractContextManager[RunningTarget]:
    return our_target(["--disk", str(disk), "--size", "64M", "--target-name", IQN,
                       "--portal", "127.0.0.1:0", *extra], tmp_path)


def write16(lba: int, blocks: int) -> bytes:
    return bytes([0x8A, 0]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + b"\0\0"


def read16(lba: int, blocks: int) -> bytes:
    return bytes([0x88, 0]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + b"\0\0"


async def login(target: RunningTarget, name: str) -> Session:
    return await Session.connect(target.host, target.port, target_name=IQN,
                                 initiator_name=f"iqn.2026-11.test:{name}")


def command(s: Session, k: int, cdb_: bytes, length: int, *, write: bool) -> P.SCSICommand:
    return P.SCSICommand(itt=k, lun=P.encode_lun(0), cdb=cdb_, expected_length=length,
                         cmdsn=(s.cmdsn + k) & 0xFFFFFFFF, expstatsn=s.expstatsn,
                         read=not write, write=write, final=True)


async def answers(s: Session, count: int) -> tuple[dict[int, P.SCSIResponse], set[int]]:
    """The responses to ``count`` commands, and the tags of those that got an R2T."""
    got: dict[int, P.SCSIResponse] = {}
    solicited: set[int] = set()
    while len(got) < count:
        pdu = await s.stream.receive_pdu()
        if isinstance(pdu, P.R2T):
            solicited.add(pdu.itt)
        elif isinstance(pdu, P.SCSIResponse):
            got[pdu.itt] = pdu
    return got, solicited


def sense_of(rsp: P.SCSIResponse) -> tuple[int, tuple[int, int]]:
    sense = parse_sense(rsp.sense)
    assert sense is not None, rsp
    return sense.key, (sense.asc, sense.ascq)


def test_writes_whose_data_never_comes_hold_no_memory_and_end_after_the_timeout(
        tmp_path: Path) -> None:
    """8 WRITE(16) of 64 MiB and 8 of 16 MiB, no data, from each of 4 sessions at once."""
    disk = tmp_path / "d.img"
    args = ["--data-out-timeout", str(TIMEOUT), "--session-buffer-budget", "32M",
            "--buffer-budget", "160M"]
    with start(disk, tmp_path, *args) as target:
        pid = target.process.pid
        before = rss_mib(pid)
        peak = before
        results: list[tuple[dict[int, P.SCSIResponse], set[int], float]] = []

        async def hostile(i: int) -> None:
            s = await login(target, f"hostile-{i}")
            t0 = trio.current_time()
            for k in range(8):
                await s.stream.send_pdu(command(s, k, write16(0, 64 * MiB // 512), 64 * MiB,
                                                write=True))
            for k in range(8, 16):
                await s.stream.send_pdu(command(s, k, write16(0, 32768), 16 * MiB,
                                                write=True))
            with trio.fail_after(10 * TIMEOUT):
                got, solicited = await answers(s, 16)
            results.append((got, solicited, trio.current_time() - t0))
            await s.stream.aclose()

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_mib(pid))
                await trio.sleep(0.1)

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sample)
                async with trio.open_nursery() as load:
                    for i in range(4):
                        load.start_soon(hostile, i)
                    # verified I/O meanwhile: any error or mismatch raises
                    disks = await healthy_sessions(target.host, target.port, IQN,
                                                   sessions=1, region=8 * MiB,
                                                   duration=3 * TIMEOUT)
                    assert disks[0].verified >= 8 * MiB
                nursery.cancel_scope.cancel()

        trio.run(main)
        log = target.log()
        assert target.process.poll() is None
    assert peak - before < 64, f"the target grew by {peak - before:.0f} MiB"
    assert len(results) == 4
    for got, solicited, elapsed in results:
        for k in range(8):  # longer than MAXIMUM TRANSFER LENGTH: refused, nothing asked
            assert got[k].status == Status.CHECK_CONDITION
            assert sense_of(got[k]) == (SenseKey.ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB)
            assert k not in solicited
        ended = {k: got[k] for k in range(8, 16)}
        timed_out = [k for k, r in ended.items() if r.status == Status.CHECK_CONDITION]
        for k in timed_out:
            assert sense_of(ended[k]) == (SenseKey.ABORTED_COMMAND, INITIATOR_RESPONSE_TIMEOUT)
            assert k in solicited  # its bytes were reserved before its R2T
        busy = [k for k, r in ended.items() if r.status == Status.BUSY]
        assert len(timed_out) + len(busy) == 8, ended
        assert len(solicited) <= 8 and len(timed_out) >= 2  # 32 MiB: two at a time
        assert elapsed >= TIMEOUT
    # the first of each connection is logged as a warning, whichever it is
    assert "no Data-Out for task" in log or "no buffer budget for task" in log, log


def test_an_initiator_that_does_not_read_a_tmpfs_lun_cannot_grow_the_target(
        tmp_path: Path) -> None:
    # On a tmpfs reads take neither RWF_NOWAIT nor sendfile: every one of them is a task
    # with a buffer of its own, which the budget must hold back.
    where = tmpfs_dir(tmp_path)
    disk = where / "d.img"
    try:
        with start(disk, tmp_path, "--session-buffer-budget", "32M") as target:
            disk.read_bytes()
            before = rss_mib(target.process.pid)

            async def flood() -> int:
                s = await login(target, "deaf")
                raw = s.stream.stream
                sent = 0
                with trio.move_on_after(4):
                    while True:  # reads of 1 and 4 MiB; nothing of the answers is read
                        size = (1, 4)[sent % 2] * MiB
                        cmd = command(s, sent, read16(sent % 8 * 8192, size // 512), size,
                                      write=False)
                        await raw.send_all(encode_bytes(cmd))
                        sent += 1
                growth = rss_mib(target.process.pid) - before
                await raw.aclose()
                assert growth < 48, f"the target grew by {growth:.0f} MiB for {sent} reads"
                return sent

            sent = trio.run(flood)
            assert target.process.poll() is None
        assert sent > 8  # the target did take commands before it pushed back
    finally:
        disk.unlink(missing_ok=True)
        if where != tmp_path:
            where.rmdir()


def test_transfers_longer_than_the_block_limits_page_allows_are_refused(
        tmp_path: Path) -> None:
    longest = 32 * MiB // 512  # MAXIMUM TRANSFER LENGTH, in blocks

    async def main(target: RunningTarget) -> None:
        s = await login(target, "greedy")
        cases = [
            (read16(0, longest + 1), (longest + 1) * 512, False),
            (write16(0, longest + 1), (longest + 1) * 512, True),
            (write16(0, 8), 64 * MiB, True),  # a small write with a huge EDTL
            (bytes([0x8F, 0]) + bytes(8) + (longest + 1).to_bytes(4, "big") + b"\0\0", 0,
             False),  # VERIFY(16), BYTCHK 0: its length is a transfer length too
        ]
        for k, (c, length, write) in enumerate(cases):
            await s.stream.send_pdu(command(s, k, c, length, write=write))
        # the longest allowed still works
        await s.stream.send_pdu(command(s, len(cases), read16(0, longest), longest * 512,
                                        write=False))
        with trio.fail_after(20):
            got: dict[int, P.SCSIResponse] = {}
            data = 0
            r2ts = 0
            while len(got) < len(cases) + 1:
                pdu = await s.stream.receive_pdu()
                if isinstance(pdu, P.DataIn):
                    data += len(pdu.data)
                    if pdu.has_status:
                        got[pdu.itt] = P.SCSIResponse(itt=pdu.itt, status=pdu.status)
                elif isinstance(pdu, P.R2T):
                    r2ts += 1
                elif isinstance(pdu, P.SCSIResponse):
                    got[pdu.itt] = pdu
        for k in range(len(cases)):
            assert got[k].status == Status.CHECK_CONDITION
            assert sense_of(got[k]) == (SenseKey.ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB)
        assert got[len(cases)].status == Status.GOOD
        assert data == longest * 512 and r2ts == 0
        await s.stream.aclose()

    with start(tmp_path / "d.img", tmp_path) as target:
        trio.run(main, target)
