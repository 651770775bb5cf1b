"""Serial number arithmetic (RFC 1982, as RFC 7143 §4.2.2.1 asks) for the 32-bit CmdSN,
StatSN and DataSN counters, which wrap around."""

from __future__ import annotations

SERIAL_MODULUS = 1 << 32
SERIAL_HALF = 1 << 31


def sn_add(a: int, n: int) -> int:
    """``a + n``, wrapped to 32 bits."""
    return (a + n) % SERIAL_MODULUS


def sn_lt(a: int, b: int) -> bool:
    """``a`` comes before ``b``."""
    return a != b and (b - a) % SERIAL_MODULUS < SERIAL_HALF


def sn_le(a: int, b: int) -> bool:
    return a == b or sn_lt(a, b)
