"""A reload changes running LUNs in place and tells every session with unit attentions."""

from __future__ import annotations

import os
from pathlib import Path

from blockbridge_target.backends.file import FileBackend
from blockbridge_target.backends.null import NullBackend
from blockbridge_target.lun import LogicalUnit, Nexus, SCSIResult
from blockbridge_target.server import TargetServer
from blockbridge_target.session import Session
from blockbridge_target.targets import TargetDef

from blockbridge.iscsi.params import SessionParams
from blockbridge.scsi import cdb
from blockbridge.scsi.constants import SenseKey, Status
from blockbridge.scsi.sense import parse_sense

T = "iqn.2026-11.test:live"
A = Nexus("iqn.2026-11.test:a", b"\x80\0\0\0\0\1", T)
B = Nexus("iqn.2026-11.test:b", b"\x80\0\0\0\0\2", T)
TUR = bytes(6)
CAPACITY_CHANGED = (SenseKey.UNIT_ATTENTION, 0x2A, 0x09)
LUNS_CHANGED = (SenseKey.UNIT_ATTENTION, 0x3F, 0x0E)


def unit(number: int, path: Path) -> LogicalUnit:
    return LogicalUnit(number, FileBackend(str(path)), target_name=T)


def target(luns: dict[int, Path]) -> TargetDef:
    return TargetDef(T, {n: unit(n, p) for n, p in luns.items()})


def server_with_sessions(luns: dict[int, Path]) -> TargetServer:
    server = TargetServer([target(luns)])
    t = server.targets[T]
    for tsih, nexus in enumerate((A, B), 1):
        server.sessions.add(Session(tsih, nexus.isid, nexus.initiator_name, T,
                                    SessionParams(), nexus, t.luns, 1, 32))
    return server


def sense_of(r: SCSIResult) -> tuple[int, int, int] | None:
    s = parse_sense(r.sense) if r.status == Status.CHECK_CONDITION else None
    return (s.key, s.asc, s.ascq) if s is not None else None


async def capacity(lu: LogicalUnit, nexus: Nexus) -> int:
    r = await lu.execute(cdb.read_capacity_16(), b"", nexus)
    assert r.status == Status.GOOD
    data = bytes(r.data)
    return (int.from_bytes(data[0:8], "big") + 1) * int.from_bytes(data[8:12], "big")


def images(tmp_path: Path, *names: str) -> dict[str, Path]:
    out = {}
    for name in names:
        out[name] = tmp_path / f"{name}.img"
        out[name].write_bytes(bytes(1 << 20))
    return out


async def test_a_grown_file_raises_capacity_data_has_changed_on_every_session(
        tmp_path: Path) -> None:
    disk = images(tmp_path, "d")["d"]
    server = server_with_sessions({0: disk})
    lu = server.targets[T].luns[0]
    assert await capacity(lu, A) == 1 << 20
    os.truncate(disk, 3 << 20)
    changes = server.reload([target({0: disk})], {}, None)
    assert changes == [f"LUN 0 of {T} is now {3 << 20} bytes"]
    assert server.targets[T].luns[0] is lu  # the same unit, with its state
    for nexus in (A, B):  # B never addressed the LUN before
        assert sense_of(await lu.execute(TUR, b"", nexus)) == CAPACITY_CHANGED
        assert sense_of(await lu.execute(TUR, b"", nexus)) is None  # reported once
        assert await capacity(lu, nexus) == 3 << 20
    # a write to the new blocks reaches the file
    r = await lu.execute(cdb.write((2 << 20) // 512, 1), b"\x5a" * 512, A)
    assert r.status == Status.GOOD
    with disk.open("rb") as f:
        f.seek(2 << 20)
        assert f.read(512) == b"\x5a" * 512


async def test_an_unchanged_size_raises_nothing(tmp_path: Path) -> None:
    disk = images(tmp_path, "d")["d"]
    server = server_with_sessions({0: disk})
    assert server.reload([target({0: disk})], {}, None) == []
    assert sense_of(await server.targets[T].luns[0].execute(TUR, b"", A)) is None


async def test_a_new_path_swaps_the_backing_store(tmp_path: Path) -> None:
    d = images(tmp_path, "old", "new")
    os.truncate(d["new"], 2 << 20)
    d["new"].write_bytes(b"\x77" * 512 + bytes((2 << 20) - 512))
    server = server_with_sessions({0: d["old"]})
    lu = server.targets[T].luns[0]
    server.reload([target({0: d["new"]})], {}, None)
    assert sense_of(await lu.execute(TUR, b"", A)) == CAPACITY_CHANGED
    r = await lu.execute(cdb.read(0, 1), b"", A)
    assert r.status == Status.GOOD and bytes(r.data) == b"\x77" * 512
    assert lu.backend.description == f"file {d['new']}"


async def test_nullio_blocks_change_the_capacity(tmp_path: Path) -> None:
    server = TargetServer([TargetDef(T, {0: LogicalUnit(0, NullBackend(1 << 20),
                                                        target_name=T)})])
    fresh = TargetDef(T, {0: LogicalUnit(0, NullBackend(4 << 20), target_name=T)})
    assert server.reload([fresh], {}, None) == [f"LUN 0 of {T} is now {4 << 20} bytes"]


async def test_added_and_removed_luns_raise_reported_luns_data_has_changed(
        tmp_path: Path) -> None:
    d = images(tmp_path, "l0", "l1", "l2")
    server = server_with_sessions({0: d["l0"], 1: d["l1"]})
    luns = server.targets[T].luns
    lu0 = luns[0]
    changes = server.reload([target({0: d["l0"], 2: d["l2"]})], {}, None)
    assert changes == [f"removed LUN 1 of {T}", f"added LUN 2 to {T}"]
    assert sorted(luns) == [0, 2]  # the dict the sessions share
    for nexus in (A, B):
        assert sense_of(await lu0.execute(TUR, b"", nexus)) == LUNS_CHANGED
        assert sense_of(await lu0.execute(TUR, b"", nexus)) is None
        # the new LUN works at once, without an attention of its own
        assert sense_of(await luns[2].execute(TUR, b"", nexus)) is None


async def test_sessions_of_other_targets_are_not_told(tmp_path: Path) -> None:
    d = images(tmp_path, "l0", "l1")
    server = server_with_sessions({0: d["l0"]})
    other = Nexus("iqn.2026-11.test:c", b"\x80\0\0\0\0\3", "iqn.2026-11.test:other")
    server.sessions.add(Session(9, other.isid, other.initiator_name, other.target_name,
                                SessionParams(), other, {}, 1, 32))
    server.reload([target({0: d["l0"], 1: d["l1"]})], {}, None)
    assert sense_of(await server.targets[T].luns[0].execute(TUR, b"", other)) is None
