"""Each CDB layout of blockbridge.scsi.cdb, built by the initiator's builders and parsed by
the target's parsers: round trips, and short CDBs refused as INVALID FIELD IN CDB."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blockbridge.scsi import cdb
from blockbridge.scsi.constants import (
    INVALID_FIELD_IN_CDB,
    PARAMETER_LIST_LENGTH_ERROR,
    Op,
)
from blockbridge.scsi.sense import CheckCondition

LBA_OPS = {  # op: (largest LBA, largest number of blocks)
    Op.READ_10: (2**32 - 1, 2**16 - 1), Op.WRITE_12: (2**32 - 1, 2**32 - 1),
    Op.WRITE_16: (2**64 - 1, 2**32 - 1), Op.VERIFY_16: (2**64 - 1, 2**32 - 1),
    Op.WRITE_SAME_10: (2**32 - 1, 2**16 - 1), Op.WRITE_SAME_16: (2**64 - 1, 2**32 - 1),
    Op.SYNCHRONIZE_CACHE_10: (2**32 - 1, 2**16 - 1), Op.PRE_FETCH_16: (2**64 - 1, 2**32 - 1),
    Op.ORWRITE_16: (2**64 - 1, 2**32 - 1), Op.VERIFY_12: (2**32 - 1, 2**32 - 1),
}


@given(st.sampled_from(sorted(LBA_OPS)), st.data(), st.integers(0, 255))
def test_block_commands_round_trip(op: int, data: st.DataObject, flags: int) -> None:
    top_lba, top_n = LBA_OPS[op]
    lba, n = data.draw(st.integers(0, top_lba)), data.draw(st.integers(0, top_n))
    built = cdb.lba_cdb(op, lba, n, flags)
    assert len(built) == cdb.cdb_size(op) and built[0] == op
    assert cdb.parse_lba_cdb(built) == (lba, n, flags)
    with pytest.raises(CheckCondition) as info:
        cdb.parse_lba_cdb(built[:-1])
    assert info.value.asc_ascq == INVALID_FIELD_IN_CDB


@given(st.integers(0, 2**21 - 1), st.integers(1, 256))
def test_six_byte_reads_round_trip(lba: int, n: int) -> None:
    assert cdb.parse_lba_cdb(cdb.lba_cdb(Op.READ_6, lba, n)) == (lba, n, 0)


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.booleans())
def test_the_initiator_builders_parse_back(lba: int, n: int, fua: bool) -> None:
    lba_, n_, flags = cdb.parse_lba_cdb(cdb.write(lba, n, fua))
    assert (lba_, n_, bool(flags & cdb.FUA)) == (lba, n, fua)
    assert cdb.parse_lba_cdb(cdb.read(lba, n))[:2] == (lba, n)
    unmap, ndob = bool(lba & 1), bool(n & 1)
    ws = cdb.parse_lba_cdb(cdb.write_same_16(lba, n, unmap=unmap, ndob=ndob))
    assert ws == (lba, n, (cdb.UNMAP_BIT if unmap else 0) | (cdb.NDOB if ndob else 0))


@given(st.integers(0, 2**64 - 1), st.integers(0, 255), st.booleans())
def test_compare_and_write_round_trips(lba: int, n: int, fua: bool) -> None:
    assert cdb.parse_compare_and_write(cdb.compare_and_write(lba, n, fua=fua)) == (
        lba, n, cdb.FUA if fua else 0)


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1))
def test_get_lba_status_round_trips(lba: int, alloc: int) -> None:
    assert cdb.parse_get_lba_status(cdb.get_lba_status(lba, alloc)) == (lba, alloc)


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
                          st.integers(0, 2)), max_size=20))
def test_lba_status_data_round_trips(descriptors: list[tuple[int, int, int]]) -> None:
    assert cdb.parse_lba_status(cdb.lba_status(descriptors)) == descriptors


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1)), max_size=30))
def test_unmap_round_trips(ranges: list[tuple[int, int]]) -> None:
    built, params = cdb.unmap(ranges)
    assert cdb.parse_unmap(built) == (False, len(params))
    assert cdb.parse_unmap_parameters(params) == ranges


@pytest.mark.parametrize("params", [b"", bytes(7), bytes([0, 22, 0, 16]) + bytes(4 + 8),
                                    bytes([0, 14, 0, 8]) + bytes(12)])
def test_bad_unmap_parameter_lists(params: bytes) -> None:
    with pytest.raises(CheckCondition) as info:
        cdb.parse_unmap_parameters(params)
    assert info.value.asc_ascq == PARAMETER_LIST_LENGTH_ERROR


@given(st.one_of(st.none(), st.integers(0, 255)), st.integers(0, 2**16 - 1))
def test_inquiry_round_trips(page: int | None, alloc: int) -> None:
    byte1, page_, alloc_ = cdb.parse_inquiry(cdb.inquiry(alloc, page))
    assert (page_, alloc_) == (page, alloc) and byte1 & 1 == (page is not None)


@given(st.integers(0, 2**32 - 1))
def test_report_luns_round_trips(alloc: int) -> None:
    assert cdb.parse_report_luns(cdb.report_luns(alloc)) == alloc
