"""Type=nbd against nbdkit: declarations from what the export offers, many commands in
flight on one connection driven from its descriptor, and clear errors."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import trio
from blockbridge_target import spc
from blockbridge_target.backends.base import Calls, Fua
from blockbridge_target.backends.nbd import NbdBackend
from blockbridge_target.config import parse_config
from blockbridge_target.configured import StartupError, server_from_config
from blockbridge_target.lun import LogicalUnit, Nexus, SCSIResult

from blockbridge.scsi import cdb as build
from blockbridge.scsi.constants import (
    INVALID_COMMAND_OPERATION_CODE,
    UNRECOVERED_READ_ERROR,
    Op,
    SenseKey,
    Status,
)
from blockbridge.scsi.sense import parse_sense
from tests.nbdkit import nbdkit

A = Nexus("iqn.2026-11.test:a", b"\x80\0\0\0\0\1", "iqn.2026-11.test:t")
T = "iqn.2026-11.test:t"


def sense_of(r: SCSIResult) -> tuple[int, tuple[int, int]]:
    s = parse_sense(r.sense)
    assert r.status == Status.CHECK_CONDITION and s is not None
    return s.key, (s.asc, s.ascq)


async def test_an_export_declares_what_it_offers(tmp_path: Path) -> None:
    with nbdkit(tmp_path, "memory", "1M") as export:
        uri = export.uri
        b = NbdBackend(uri)
        assert b.size == 1 << 20 and b.caps.calls is Calls.ASYNC
        assert b.caps.can_write and b.caps.can_flush and b.caps.can_fua is Fua.NATIVE
        assert b.caps.can_trim and b.caps.can_zero and b.caps.can_extents
        assert not b.caps.trim_zeroes and b.caps.file is None
        b.close()


async def test_what_an_export_lacks_is_an_invalid_opcode(tmp_path: Path) -> None:
    with nbdkit(tmp_path, "pattern", "1M") as export:
        uri = export.uri
        lu = LogicalUnit(0, NbdBackend(uri), target_name=T)
        assert lu.read_only
        invalid = (SenseKey.ILLEGAL_REQUEST, INVALID_COMMAND_OPERATION_CODE)
        unmap_cdb, params = build.unmap([(0, 8)])
        assert sense_of(await lu.execute(unmap_cdb, params, A)) == invalid
        assert sense_of(await lu.execute(build.synchronize_cache(), b"", A)) == invalid
        listed = {op for op, _sa, _n in spc.commands(lu)}
        assert Op.UNMAP not in listed and Op.SYNCHRONIZE_CACHE_10 not in listed
        r = await lu.execute(build.read(1, 1), b"", A)  # the pattern: each 8 bytes, offset
        assert bytes(r.data)[:16] == (512).to_bytes(8, "big") + (520).to_bytes(8, "big")
        lu.close()


async def test_many_commands_in_flight_on_one_connection(tmp_path: Path) -> None:
    with nbdkit(tmp_path, "memory", "4M") as export:
        uri = export.uri
        lu = LogicalUnit(0, NbdBackend(uri), target_name=T)
        blocks = [os.urandom(4096) for _ in range(64)]
        results: dict[int, SCSIResult] = {}

        async def write(i: int) -> None:
            results[i] = await lu.execute(build.write(i * 8, 8), blocks[i], A)

        async def read(i: int) -> None:
            results[i] = await lu.execute(build.read(i * 8, 8), b"", A)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for i in range(64):
                    nursery.start_soon(write, i)
            assert all(r.status == Status.GOOD for r in results.values())
            async with trio.open_nursery() as nursery:
                for i in range(64):
                    nursery.start_soon(read, i)
        assert [bytes(results[i].data) for i in range(64)] == blocks
        lu.close()


async def test_a_lost_export_is_a_medium_error_not_a_hang(tmp_path: Path) -> None:
    with nbdkit(tmp_path, "memory", "1M") as export:
        uri = export.uri
        lu = LogicalUnit(0, NbdBackend(uri), target_name=T)
        assert (await lu.execute(build.read(0, 8), b"", A)).status == Status.GOOD
        pid = int(next(line.split()[1] for line in os.popen(
            f"ps -o ppid=,pid=,args= --ppid {os.getpid()}") if "nbdkit" in line))
        os.kill(pid, signal.SIGKILL)
        with trio.fail_after(10):
            r = await lu.execute(build.read(0, 8), b"", A)
        assert sense_of(r) == (SenseKey.MEDIUM_ERROR, UNRECOVERED_READ_ERROR)
        lu.close()


def test_a_missing_binding_names_the_package(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nbd", None)  # import nbd: ImportError
    conf = tmp_path / "ietd.conf"
    conf.write_text(f"Target {T}\n  Lun 0 Type=nbd,Uri=nbd://localhost/disk\n")
    with pytest.raises(StartupError) as info:
        server_from_config(conf, None)
    assert str(info.value).startswith(
        f"{conf}:2: Lun 0: Type=nbd needs libnbd's Python binding: install the Debian "
        "package python3-libnbd")


def test_an_unreachable_export_is_one_line(tmp_path: Path) -> None:
    conf = tmp_path / "ietd.conf"
    sock = tmp_path / "none.sock"
    conf.write_text(f"Target {T}\n  Lun 0 Type=nbd,Uri=nbd+unix:///?socket={sock}\n")
    with pytest.raises(StartupError) as info:
        server_from_config(conf, None)
    assert str(info.value).startswith(
        f"{conf}:2: Lun 0: cannot connect to nbd+unix:///?socket={sock}: ")


def test_an_nbd_uri_is_checked_with_the_configuration() -> None:
    with pytest.raises(Exception) as info:
        parse_config(f"Target {T}\n Lun 0 Type=nbd,Uri=http://x/y\n", "ietd.conf")
    assert str(info.value).startswith("ietd.conf:2: Lun 0: Uri 'http://x/y' is not an NBD URI")
