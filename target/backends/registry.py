"""Which backend serves a LUN: ``Type=`` in ietd.conf (and ``--lun`` in quick mode).

Each backend module declares its types as :class:`BackendType` entries (``TYPES``), with
the keys its ``Lun`` line may carry; ``backend_types`` gathers them.  A new backend is one
module and one line here.  Key values are checked when the configuration is read (errors
carry file and line); the backend itself is opened when the target starts or reloads.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .base import Backend

_SIZE = re.compile(r"^(\d+)([KMGTP]?)(i?B)?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number with an optional K, M, G, T or P suffix (powers of 1024).
    Raises ValueError with a message for the user."""
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"invalid size {text!r}: use a number with an optional K, M, G or T "
                         "suffix, e.g. 10G")
    value: int = int(m[1]) * 1024 ** " KMGTP".index((m[2] or " ").upper())
    if value <= 0:
        raise ValueError("the size must be larger than zero")
    return value


def parse_blocks(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1 << 48:
        raise ValueError(f"needs a number of blocks from 1 to {1 << 48}, got {text!r}")
    return int(text)


def parse_text(text: str) -> str:
    if not text:
        raise ValueError("is empty")
    return text


@dataclass(frozen=True)
class Key:
    name: str  # as documented, e.g. "Path"; matched without regard to case
    parse: Callable[[str], Any]  # raises ValueError with a message
    required: bool = False
    meaning: str = ""


@dataclass(frozen=True)
class Opening:
    """What a backend is opened with: its checked keys (lower case) and the LUN's mode."""

    options: Mapping[str, Any]
    read_only: bool
    block_size: int


@dataclass(frozen=True)
class BackendType:
    name: str  # the Type= value
    summary: str
    keys: tuple[Key, ...]
    open: Callable[[Opening], Backend]  # raises BackingStoreError with a message

    def key(self, name: str) -> Key | None:
        return next((k for k in self.keys if k.name.lower() == name.lower()), None)


@functools.cache
def backend_types() -> dict[str, BackendType]:
    """Every Type= value and its entry."""
    from . import file, memory, nbd, null

    found = {}
    for module in (file, null, memory, nbd):
        for entry in module.TYPES:
            found[entry.name] = entry
    return found
