"""Portal addresses as both command lines take them: HOST, HOST:PORT, [IPv6] or [IPv6]:PORT
(a TargetAddress of RFC 7143 §13.8 without its portal group tag)."""

from __future__ import annotations

import re

from .constants import DEFAULT_PORT

_BRACKETED = re.compile(r"^\[([0-9a-fA-F:.]+)\](?::(\d+))?$")
_PLAIN = re.compile(r"^([^:\[\]]+)(?::(\d+))?$")


def split_portal(text: str) -> tuple[str, int] | None:
    """(host, port), the port 3260 when none is given; None if ``text`` is not a portal.
    The port is digits, not checked against 65535."""
    m = _BRACKETED.match(text) or _PLAIN.match(text)
    if not m:
        return None
    return m[1], int(m[2]) if m[2] is not None else DEFAULT_PORT
