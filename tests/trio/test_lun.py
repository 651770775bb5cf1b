"""The SCSI disk emulation, driven with CDB bytes on a temporary sparse file."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from blockbridge_target.backends.file import FileBackend
from blockbridge_target.lun import LogicalUnit, Nexus, SCSIResult
from blockbridge_target.writegate import WriteGate

from blockbridge.scsi.constants import SenseKey, Status
from blockbridge.scsi.sense import parse_sense

A = Nexus("iqn.2026-11.test:a", b"\x80\0\0\0\0\1", "iqn.2026-11.test:t")
B = Nexus("iqn.2026-11.test:b", b"\x80\0\0\0\0\2", "iqn.2026-11.test:t")
BLOCKS = 2048


@pytest.fixture
def lu(tmp_path: Path) -> LogicalUnit:
    backend = FileBackend(str(tmp_path / "d.img"), create_size=BLOCKS * 512)
    return LogicalUnit(0, backend, target_name="iqn.2026-11.test:t")


def cdb10(op: int, lba: int, n: int, flags: int = 0) -> bytes:
    return bytes([op, flags]) + lba.to_bytes(4, "big") + b"\0" + n.to_bytes(2, "big") + b"\0"


def cdb16(op: int, lba: int, n: int, flags: int = 0) -> bytes:
    return bytes([op, flags]) + lba.to_bytes(8, "big") + n.to_bytes(4, "big") + b"\0\0"


def sense_of(r: SCSIResult) -> tuple[int, int, int]:
    s = parse_sense(r.sense)
    assert r.status == Status.CHECK_CONDITION and s is not None
    return s.key, s.asc, s.ascq


async def test_write_then_read(lu: LogicalUnit) -> None:
    data = bytes(range(256)) * 4
    assert (await lu.execute(cdb10(0x2A, 10, 2), data, A)).status == Status.GOOD
    r = await lu.execute(cdb10(0x28, 10, 2), b"", A)
    assert r.status == Status.GOOD and bytes(r.data) == data


async def test_out_of_range_and_protect_fields(lu: LogicalUnit) -> None:
    assert sense_of(await lu.execute(cdb10(0x28, BLOCKS - 1, 2), b"", A)) == (
        SenseKey.ILLEGAL_REQUEST, 0x21, 0)
    assert sense_of(await lu.execute(cdb10(0x28, 0, 1, flags=0x20), b"", A)) == (
        SenseKey.ILLEGAL_REQUEST, 0x24, 0)
    assert sense_of(await lu.execute(bytes([0xEE]) + bytes(9), b"", A)) == (
        SenseKey.ILLEGAL_REQUEST, 0x20, 0)


async def test_read_only_lun_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "ro.img"
    path.write_bytes(bytes(512 * 8))
    lu = LogicalUnit(0, FileBackend(str(path), read_only=True), target_name="t")
    r = await lu.execute(cdb10(0x2A, 0, 1), bytes(512), A)
    assert sense_of(r) == (SenseKey.DATA_PROTECT, 0x27, 0)


async def test_unmap_punches_holes_and_reads_zero(lu: LogicalUnit) -> None:
    await lu.execute(cdb10(0x2A, 0, 64), b"\xff" * 512 * 64, A)
    params = (22).to_bytes(2, "big") + (16).to_bytes(2, "big") + bytes(4)
    params += (0).to_bytes(8, "big") + (64).to_bytes(4, "big") + bytes(4)
    unmap = bytes([0x42, 0, 0, 0, 0, 0, 0]) + len(params).to_bytes(2, "big") + b"\0"
    assert (await lu.execute(unmap, params, A)).status == Status.GOOD
    r = await lu.execute(cdb10(0x28, 0, 64), b"", A)
    assert bytes(r.data) == bytes(512 * 64)
    status = await lu.execute(bytes([0x9E, 0x12]) + (0).to_bytes(8, "big") +
                              (64).to_bytes(4, "big") + b"\0\0", b"", A)
    assert bytes(status.data)[20] == 1  # deallocated


async def test_compare_and_write_miscompare_reports_offset(lu: LogicalUnit) -> None:
    await lu.execute(cdb10(0x2A, 5, 1), b"A" * 512, A)
    cdb = bytes([0x89, 0]) + (5).to_bytes(8, "big") + bytes(3) + bytes([1, 0, 0])
    ok = await lu.execute(cdb, b"A" * 512 + b"B" * 512, A)
    assert ok.status == Status.GOOD
    bad = await lu.execute(cdb, b"B" * 100 + b"X" + b"B" * 411 + b"C" * 512, A)
    s = parse_sense(bad.sense)
    assert s is not None and s.key == SenseKey.MISCOMPARE and s.information == 100


def caw(lba: int, n: int) -> bytes:
    return bytes([0x89, 0]) + lba.to_bytes(8, "big") + bytes(3) + bytes([n, 0, 0])


async def test_a_write_never_lands_between_the_read_and_write_of_compare_and_write(
        lu: LogicalUnit, monkeypatch: pytest.MonkeyPatch) -> None:
    """A WRITE that comes while COMPARE AND WRITE has read its blocks and not yet written
    them waits, also one the reader loop would have written at once; it lands after, so
    it is not overwritten by data computed from what it replaced."""
    old, new, other = b"\1" * 4096, b"\2" * 4096, b"\3" * 4096
    assert (await lu.execute(cdb10(0x2A, 8, 8), old, A)).status == Status.GOOD
    real_io = lu._io
    read, go_on = trio.Event(), trio.Event()

    async def io(fn, *args):  # type: ignore[no-untyped-def]
        result = await real_io(fn, *args)
        if fn == lu.backend.read:
            read.set()
            await go_on.wait()
        return result

    monkeypatch.setattr(lu, "_io", io)
    results: dict[str, SCSIResult] = {}

    async def run(name: str, cdb: bytes, data: bytes) -> None:
        results[name] = await lu.execute(cdb, data, A)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "caw", caw(8, 8), old + new)
        await read.wait()
        assert not isinstance(lu.submit(cdb10(0x2A, 8, 8), A, other), SCSIResult)
        nursery.start_soon(run, "write", cdb10(0x2A, 8, 8), other)
        await trio.testing.wait_all_tasks_blocked()
        assert "write" not in results
        go_on.set()
    assert results["caw"].status == results["write"].status == Status.GOOD
    assert bytes((await lu.execute(cdb10(0x28, 8, 8), b"", A)).data) == other
    assert isinstance(lu.submit(cdb10(0x2A, 8, 8), A, new), SCSIResult)  # the gate is open again


async def test_compare_and_write_waits_for_the_writes_in_progress(
        lu: LogicalUnit, monkeypatch: pytest.MonkeyPatch) -> None:
    """It compares with what a WRITE already under way stores, not with what was there."""
    old, new, newer = b"\1" * 512, b"\2" * 512, b"\4" * 512
    assert (await lu.execute(cdb10(0x2A, 5, 1), old, A)).status == Status.GOOD
    real_write_at = lu._write_at
    started, go_on = trio.Event(), trio.Event()

    async def write_at(offset: int, data: bytes, sync: bool) -> None:
        started.set()
        await go_on.wait()
        await real_write_at(offset, data, sync)

    monkeypatch.setattr(lu, "_write_at", write_at)
    results: dict[str, SCSIResult] = {}

    async def run(name: str, cdb: bytes, data: bytes) -> None:
        results[name] = await lu.execute(cdb, data, A)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "write", cdb10(0x2A, 5, 1, flags=0x08), new)  # FUA
        await started.wait()
        nursery.start_soon(run, "caw", caw(5, 1), new + newer)
        await trio.testing.wait_all_tasks_blocked()
        assert not results
        go_on.set()
    assert results["write"].status == results["caw"].status == Status.GOOD
    assert bytes((await lu.execute(cdb10(0x28, 5, 1), b"", A)).data) == newer


async def test_writes_start_again_when_a_waiting_compare_and_write_gives_up() -> None:
    gate = WriteGate()
    entered: list[str] = []

    async def write() -> None:
        async with gate.shared():
            entered.append("write")

    async def exclusive() -> None:
        with trio.move_on_after(0.05):
            async with gate.exclusive():
                entered.append("exclusive")

    # the shared hold is a write in progress that lasts longer than the exclusive waits
    async with trio.open_nursery() as nursery, gate.shared():
        nursery.start_soon(exclusive)
        await trio.testing.wait_all_tasks_blocked()
        assert not gate.open
        nursery.start_soon(write)
        await trio.testing.wait_all_tasks_blocked()
        assert entered == []  # held back, so the exclusive one is not starved
        await trio.sleep(0.2)
        assert entered == ["write"] and gate.open


async def test_persistent_reservation_write_exclusive(lu: LogicalUnit) -> None:
    def prout(sa: int, key: int, sa_key: int = 0, pr_type: int = 0) -> tuple[bytes, bytes]:
        cdb = bytes([0x5F, sa, pr_type, 0, 0, 0, 0, 0, 24, 0])
        return cdb, key.to_bytes(8, "big") + sa_key.to_bytes(8, "big") + bytes(8)

    assert (await lu.execute(*prout(0, 0, 0xA), A)).status == Status.GOOD  # register
    assert (await lu.execute(*prout(1, 0xA, pr_type=1), A)).status == Status.GOOD  # reserve WE
    w = await lu.execute(cdb10(0x2A, 0, 1), bytes(512), B)
    assert w.status == Status.RESERVATION_CONFLICT
    r = await lu.execute(cdb10(0x28, 0, 1), b"", B)
    assert r.status == Status.GOOD  # reads allowed under Write Exclusive
    assert (await lu.execute(cdb10(0x2A, 0, 1), bytes(512), A)).status == Status.GOOD
    keys = await lu.execute(bytes([0x5E, 0, 0, 0, 0, 0, 0, 0, 64, 0]), b"", B)
    assert bytes(keys.data)[8:16] == (0xA).to_bytes(8, "big")


async def test_lun_reset_gives_other_nexus_a_unit_attention(lu: LogicalUnit) -> None:
    await lu.execute(bytes(6), b"", A)
    await lu.execute(bytes(6), b"", B)
    lu.logical_unit_reset(A)
    assert (await lu.execute(bytes(6), b"", A)).status == Status.GOOD
    assert sense_of(await lu.execute(bytes(6), b"", B)) == (SenseKey.UNIT_ATTENTION, 0x29, 3)
    assert (await lu.execute(bytes(6), b"", B)).status == Status.GOOD


async def test_inquiry_pages(lu: LogicalUnit) -> None:
    std = await lu.execute(bytes([0x12, 0, 0, 0, 96, 0]), b"", A)
    assert bytes(std.data)[8:16] == b"BLKBRDG "
    pages = await lu.execute(bytes([0x12, 1, 0, 0, 255, 0]), b"", A)
    assert list(bytes(pages.data)[4:]) == [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
    short = await lu.execute(bytes([0x12, 0, 0, 0, 5, 0]), b"", A)
    assert len(short.data) == 5


async def test_data_out_length(lu: LogicalUnit) -> None:
    assert lu.data_out_length(cdb10(0x2A, 0, 4)) == 2048
    assert lu.data_out_length(cdb16(0x93, 0, 100)) == 512
    assert lu.data_out_length(cdb10(0x28, 0, 4)) == 0
