"""The backend contract: what a backend declares decides which commands a LUN offers and
how the I/O engine calls it, whatever its class."""

from __future__ import annotations

import pytest
from blockbridge_target import pages, spc
from blockbridge_target.backends.base import Buffer, Calls, Capabilities
from blockbridge_target.backends.memory import MemoryBackend
from blockbridge_target.backends.null import NullBackend
from blockbridge_target.backends.registry import backend_types
from blockbridge_target.lun import LogicalUnit, Nexus, SCSIResult

from blockbridge.scsi import cdb as build
from blockbridge.scsi.constants import INVALID_COMMAND_OPERATION_CODE, Op, SenseKey, Status
from blockbridge.scsi.sense import parse_sense

A = Nexus("iqn.2026-11.test:a", b"\x80\0\0\0\0\1", "iqn.2026-11.test:t")
SIZE = 1 << 20


class PlainStore:
    """The required core only: size, block size, read, write (in worker threads)."""

    caps = Capabilities(calls=Calls.BLOCKING)

    def __init__(self) -> None:
        self.data = bytearray(SIZE)
        self.size, self.block_size, self.description = SIZE, 512, "plain store"

    def read(self, offset: int, into: bytearray) -> None:
        into[:] = self.data[offset : offset + len(into)]

    def write(self, offset: int, data: Buffer, fua: bool = False) -> None:
        self.data[offset : offset + len(data)] = data

    def close(self) -> None:
        return None


def check(r: SCSIResult) -> tuple[int, tuple[int, int]]:
    s = parse_sense(r.sense)
    assert r.status == Status.CHECK_CONDITION and s is not None
    return s.key, (s.asc, s.ascq)


def opcodes(lu: LogicalUnit) -> set[tuple[int, int | None]]:
    return {(op, sa) for op, sa, _n in spc.commands(lu)}


async def test_commands_a_backend_lacks_are_invalid_opcodes() -> None:
    store = PlainStore()
    lu = LogicalUnit(0, store, target_name="iqn.2026-11.test:t")  # type: ignore[arg-type]
    invalid = (SenseKey.ILLEGAL_REQUEST, INVALID_COMMAND_OPERATION_CODE)
    unmap_cdb, params = build.unmap([(0, 8)])
    assert check(await lu.execute(unmap_cdb, params, A)) == invalid
    assert check(await lu.execute(build.synchronize_cache(), b"", A)) == invalid
    assert check(await lu.execute(build.get_lba_status(0), b"", A)) == invalid
    listed = opcodes(lu)
    assert (Op.UNMAP, None) not in listed and (Op.SYNCHRONIZE_CACHE_10, None) not in listed
    assert (Op.SERVICE_ACTION_IN_16, 0x12) not in listed
    assert (Op.WRITE_SAME_16, None) in listed and (Op.COMPARE_AND_WRITE, None) in listed
    lbp = pages.vpd_page(0xB2, lu.identity, lu.geometry)
    assert lbp is not None and lbp[5] == 0  # no LBPU, LBPWS: UNMAP is not offered
    # what it has works: WRITE SAME by writes, COMPARE AND WRITE through the write gate
    one = b"\7" * 512
    assert (await lu.execute(build.write_same_16(8, 4), one, A)).status == Status.GOOD
    assert store.data[4096:6144] == one * 4
    caw = bytes([Op.COMPARE_AND_WRITE, 0]) + (8).to_bytes(8, "big") + bytes(3) + b"\1\0\0"
    assert (await lu.execute(caw, one + b"\2" * 512, A)).status == Status.GOOD
    assert store.data[4096:4608] == b"\2" * 512
    lu.close()


@pytest.mark.parametrize("backend", [MemoryBackend(SIZE), NullBackend(SIZE)],
                         ids=["memory", "nullio"])
async def test_inline_backends_finish_reads_and_writes_at_once(
        backend: MemoryBackend | NullBackend) -> None:
    lu = LogicalUnit(0, backend, target_name="iqn.2026-11.test:t")
    page = b"\5" * 4096
    done = lu.submit(build.write(8, 8), A, page)
    assert isinstance(done, SCSIResult) and done.status == Status.GOOD
    read = lu.submit(build.read(8, 8), A)
    assert isinstance(read, SCSIResult)
    assert bytes(read.data) == (page if isinstance(backend, MemoryBackend) else bytes(4096))
    listed = opcodes(lu)
    assert {(Op.UNMAP, None), (Op.SYNCHRONIZE_CACHE_16, None),
            (Op.SERVICE_ACTION_IN_16, 0x12)} <= listed
    lu.close()


async def test_memory_gives_back_what_is_unmapped() -> None:
    backend = MemoryBackend(SIZE)
    lu = LogicalUnit(0, backend, target_name="iqn.2026-11.test:t")
    await lu.execute(build.write(0, 64), b"\1" * 32768, A)
    assert backend.allocated == 32768
    unmap_cdb, params = build.unmap([(0, 64)])
    assert (await lu.execute(unmap_cdb, params, A)).status == Status.GOOD
    assert backend.allocated == 0
    status = await lu.execute(build.get_lba_status(0), b"", A)
    assert build.parse_lba_status(bytes(status.data))[0] == (0, SIZE // 512, 1)


def test_every_type_is_registered() -> None:
    assert {"fileio", "blockio", "nullio", "memory"} <= set(backend_types())
