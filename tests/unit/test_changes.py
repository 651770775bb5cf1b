"""Which unit attentions mean what, and how reports merge into one rescan (sans-IO)."""

from __future__ import annotations

from blockbridge.iscsi.pdu import encode_lun
from blockbridge.scsi import constants as c
from blockbridge.scsi.changes import (
    AttentionTracker,
    Change,
    Rescan,
    change_of,
    parse_read_capacity_10,
    parse_read_capacity_16,
    parse_report_luns,
)
from blockbridge.scsi.constants import SenseKey
from blockbridge.scsi.sense import build_sense

CAPACITY = build_sense(SenseKey.UNIT_ATTENTION, c.CAPACITY_DATA_HAS_CHANGED)
LUNS = build_sense(SenseKey.UNIT_ATTENTION, c.REPORTED_LUNS_DATA_HAS_CHANGED, descriptor=True)


def test_change_of_each_attention() -> None:
    assert change_of(CAPACITY) == Change.CAPACITY
    assert change_of(LUNS) == Change.LUNS  # descriptor format as well
    assert change_of(build_sense(SenseKey.UNIT_ATTENTION, c.POWER_ON_RESET)) == Change.NONE
    assert change_of(build_sense(SenseKey.UNIT_ATTENTION, c.MODE_PARAMETERS_CHANGED)) \
        == Change.NONE
    # the same codes under another sense key are not attentions
    assert change_of(build_sense(SenseKey.ILLEGAL_REQUEST, c.CAPACITY_DATA_HAS_CHANGED)) \
        == Change.NONE
    assert change_of(b"") == Change.NONE and change_of(None) == Change.NONE


def test_tracker_merges_reports_into_one_rescan() -> None:
    t = AttentionTracker()
    assert not t.pending and not t.take()
    assert t.notice(1, CAPACITY) and t.notice(1, CAPACITY) and t.notice(3, CAPACITY)
    assert not t.notice(0, build_sense(SenseKey.UNIT_ATTENTION, c.BUS_DEVICE_RESET))
    assert t.notice(0, LUNS) and t.notice(2, LUNS)  # one per LUN that stays: one rescan
    assert t.pending
    assert t.take() == Rescan(True, frozenset({1, 3}))
    assert not t.pending and t.take() == Rescan()
    t.request(False, {4})
    assert t.take() == Rescan(False, frozenset({4}))


def test_read_capacity_and_report_luns_data() -> None:
    data16 = (2047).to_bytes(8, "big") + (4096).to_bytes(4, "big") + bytes([0, 0, 0xC0, 0])
    cap = parse_read_capacity_16(data16 + bytes(16))
    assert (cap.blocks, cap.block_size, cap.thin, cap.zeroes_after_unmap) == (2048, 4096, True,
                                                                                True)
    assert cap.size == 8 << 20
    assert parse_read_capacity_16(bytes(32)).block_size == 512  # 0 means the default
    cap10 = parse_read_capacity_10((99).to_bytes(4, "big") + (512).to_bytes(4, "big"))
    assert (cap10.blocks, cap10.block_size, cap10.thin) == (100, 512, False)
    body = b"".join(encode_lun(n).to_bytes(8, "big") for n in (0, 2, 300))
    data = len(body).to_bytes(4, "big") + bytes(4) + body
    assert parse_report_luns(data) == [0, 2, 300]
    assert parse_report_luns(data[:-8]) == [0, 2]  # cut short by the allocation length
    assert parse_report_luns(b"") == []
