"""The zero test that turns all-zero writes into UNMAP: exact for every length and
position, and for views into the middle of a buffer."""

from __future__ import annotations

import pytest

from blockbridge.initiator.blockdev import all_zero


@pytest.mark.parametrize("n", [0, 1, 7, 8, 512, 4096, 1 << 20, (2 << 20) + 512])
def test_zeros_are_zero_and_any_set_byte_is_seen(n: int) -> None:
    assert all_zero(memoryview(bytearray(n)))
    for pos in sorted({0, 1, n // 3, n // 2, n - 1} & set(range(n))):
        data = bytearray(n)
        data[pos] = 0x80
        assert not all_zero(memoryview(data)), pos


def test_a_view_inside_a_larger_buffer() -> None:
    data = bytearray(9000)
    data[4] = data[4200] = 1
    assert all_zero(memoryview(data)[5:4101])
    assert not all_zero(memoryview(data)[5:4201 + 8])
