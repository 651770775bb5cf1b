"""CRC32C digests (RFC 7143 §11.4.1), through the hardware-accelerated ``crc32c`` package.

The package is imported on the first digest: most connections negotiate none, and the
package brings ``importlib.metadata`` with it (1.5 MiB of a daemon's memory).
"""

from __future__ import annotations

from collections.abc import Callable

from .pdu import Buffer

_update: Callable[[Buffer, int], int] | None = None


def _load() -> Callable[[Buffer, int], int]:
    global _update
    import crc32c as package

    _update = package.crc32c
    return _update


def crc32c(*buffers: Buffer) -> int:
    """CRC32C over the concatenation of ``buffers`` without joining them."""
    update = _update or _load()
    crc = 0
    for buf in buffers:
        crc = update(buf, crc)
    return int(crc)


def digest_bytes(*buffers: Buffer) -> bytes:
    """The 4-byte digest as it goes on the wire (little-endian, per the RFC test vectors)."""
    return crc32c(*buffers).to_bytes(4, "little")
