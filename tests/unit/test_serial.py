"""Serial number arithmetic for CmdSN/StatSN: order across the 32-bit wrap."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from blockbridge.iscsi.serial import sn_add, sn_le, sn_lt

U32 = st.integers(0, (1 << 32) - 1)


def test_order_across_the_wrap() -> None:
    assert sn_add(0xFFFFFFFF, 1) == 0
    assert sn_lt(0xFFFFFFFF, 0) and not sn_lt(0, 0xFFFFFFFF)
    assert sn_lt(0xFFFFFFF0, 5) and sn_le(5, 5) and not sn_lt(5, 5)


@given(U32, st.integers(1, (1 << 31) - 1))
def test_anything_less_than_half_the_space_ahead_comes_after(a: int, n: int) -> None:
    b = sn_add(a, n)
    assert sn_lt(a, b) and sn_le(a, b) and not sn_lt(b, a) and not sn_le(b, a)
