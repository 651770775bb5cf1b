"""key=value text (RFC 7143 §6): NUL-separated pairs, bounded, with Continue-bit reassembly."""

from __future__ import annotations

import base64
import binascii

from .errors import NegotiationError
from .pdu import Buffer

MAX_KEY_LENGTH = 63
MAX_VALUE_LENGTH = 255
MAX_BINARY_VALUE = 1024
MAX_TEXT_LENGTH = 64 * 1024
_LONG_VALUE_KEYS = frozenset({"CHAP_C", "CHAP_R", "SendTargets", "TargetAddress"})


def decode_text(data: Buffer, *, allow_duplicates: bool = False) -> list[tuple[str, str]]:
    """Split a (reassembled) text segment into (key, value) pairs, validating every bound."""
    raw = bytes(data)
    if len(raw) > MAX_TEXT_LENGTH:
        raise NegotiationError(f"text of {len(raw)} bytes is too long")
    if raw and not raw.endswith(b"\0"):
        raise NegotiationError("text data does not end with a NUL")
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for item in raw.split(b"\0")[:-1] if raw else []:
        if not item:
            continue
        key_b, sep, value_b = item.partition(b"=")
        if not sep:
            raise NegotiationError(f"text item without '=': {item[:40]!r}")
        try:
            key = key_b.decode("utf-8")
            value = value_b.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NegotiationError("text is not valid UTF-8") from exc
        if not key or len(key_b) > MAX_KEY_LENGTH:
            raise NegotiationError(f"bad key length ({len(key_b)} bytes)")
        limit = 2 + 2 * MAX_BINARY_VALUE if key in _LONG_VALUE_KEYS else MAX_VALUE_LENGTH
        if key == "TargetAlias" or key == "InitiatorAlias":
            limit = MAX_VALUE_LENGTH
        if len(value_b) > limit:
            raise NegotiationError(f"value of {key} too long ({len(value_b)} bytes)")
        if key in seen and not allow_duplicates:
            raise NegotiationError(f"key {key} sent twice")
        seen.add(key)
        pairs.append((key, value))
    return pairs


def encode_text(pairs: list[tuple[str, str]] | dict[str, str]) -> bytes:
    items = pairs.items() if isinstance(pairs, dict) else pairs
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in items)


class TextAssembler:
    """Collects text segments sent with the Continue bit until the final one arrives."""

    def __init__(self, limit: int = MAX_TEXT_LENGTH) -> None:
        self.limit = limit
        self._parts = bytearray()

    def add(self, segment: Buffer) -> None:
        if len(self._parts) + len(segment) > self.limit:
            self._parts.clear()
            raise NegotiationError("multi-PDU text exceeds the size limit")
        self._parts += segment

    def take(self) -> bytes:
        out = bytes(self._parts)
        self._parts.clear()
        return out

    @property
    def pending(self) -> bool:
        return bool(self._parts)


def decode_binary(value: str, *, max_length: int = MAX_BINARY_VALUE) -> bytes:
    """A binary value in 0x hex or 0b base64 form, bounded before decoding."""
    if len(value) > 2 + 2 * max_length:
        raise NegotiationError("binary value too long")
    prefix, body = value[:2].lower(), value[2:]
    try:
        if prefix == "0x":
            if len(body) % 2:
                body = "0" + body
            out = binascii.unhexlify(body)
        elif prefix == "0b":
            out = base64.b64decode(body, validate=True)
        else:
            raise NegotiationError(f"binary value without 0x/0b prefix: {value[:20]!r}")
    except (binascii.Error, ValueError) as exc:
        raise NegotiationError("malformed binary value") from exc
    if not out or len(out) > max_length:
        raise NegotiationError("binary value has a bad length")
    return out


def encode_hex(data: bytes) -> str:
    return "0x" + data.hex()
