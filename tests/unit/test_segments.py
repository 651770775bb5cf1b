from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blockbridge.iscsi.segments import segments


def test_pieces_cover_the_range_in_order() -> None:
    assert list(segments(0, 10, 4)) == [(0, 4, False), (4, 4, False), (8, 2, True)]
    assert list(segments(8, 16, 8)) == [(8, 8, True)]
    assert list(segments(5, 5, 4)) == []


def test_a_segment_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        list(segments(0, 1, 0))


@given(st.integers(0, 1 << 20), st.integers(0, 1 << 14), st.integers(1, 1 << 12))
def test_any_range_is_cut_exactly_once(start: int, length: int, size: int) -> None:
    pieces = list(segments(start, start + length, size))
    assert sum(n for _, n, _ in pieces) == length
    assert all(0 < n <= size for _, n, _ in pieces)
    assert [last for _, _, last in pieces] == [False] * (len(pieces) - 1) + [True] * bool(pieces)
    offsets = [off for off, _, _ in pieces]
    assert offsets == [start + i * size for i in range(len(pieces))]
