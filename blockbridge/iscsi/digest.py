"""CRC32C digests (RFC 7143 §11.4.1), through the hardware-accelerated ``crc32c`` package."""

from __future__ import annotations

import crc32c as _crc32c

from .pdu import Buffer


def crc32c(*buffers: Buffer) -> int:
    """CRC32C over the concatenation of ``buffers`` without joining them."""
    crc = 0
    for buf in buffers:
        crc = _crc32c.crc32c(buf, crc)
    return int(crc)


def digest_bytes(*buffers: Buffer) -> bytes:
    """The 4-byte digest as it goes on the wire (little-endian, per the RFC test vectors)."""
    return crc32c(*buffers).to_bytes(4, "little")
