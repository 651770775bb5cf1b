"""The buffer pool hands a buffer to one user at a time and stays bounded."""

from __future__ import annotations

from blockbridge.buffers import MAX_POOLED, MIN_POOLED, BufferPool


def test_reuse_exclusive_and_bounded() -> None:
    pool = BufferPool(keep_per_size=2, max_bytes=4 * MIN_POOLED)
    a, b = pool.take(MIN_POOLED), pool.take(MIN_POOLED)
    assert a is not b and len(a) == MIN_POOLED
    pool.give(a)
    pool.give(b)
    c = pool.take(MIN_POOLED)
    assert c is b and pool.take(MIN_POOLED) is a
    fresh = pool.take(MIN_POOLED)
    assert fresh is not a and fresh is not b
    for _ in range(3):
        pool.give(bytearray(MIN_POOLED))
    assert pool.kept_bytes == 2 * MIN_POOLED  # two per size
    pool.give(bytearray(2 * MIN_POOLED))
    pool.give(bytearray(2 * MIN_POOLED))
    assert pool.kept_bytes == 4 * MIN_POOLED  # the byte cap
    pool.give(bytearray(512))
    pool.give(bytearray(MAX_POOLED + 1))
    assert pool.kept_bytes == 4 * MIN_POOLED  # too small or too large: not kept
