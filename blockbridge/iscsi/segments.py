"""Cutting a transfer into PDUs: the one place that splits a byte range into data
segments (Data-Out, Data-In, immediate and unsolicited data) and into R2T bursts."""

from __future__ import annotations

from collections.abc import Iterator


def segments(start: int, end: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """``(offset, length, last)`` for each piece of ``[start, end)`` of at most ``size``
    bytes, in order; nothing for an empty range."""
    if size <= 0:
        raise ValueError(f"segment size must be positive, not {size}")
    offset = start
    while offset < end:
        length = min(size, end - offset)
        yield offset, length, offset + length >= end
        offset += length
