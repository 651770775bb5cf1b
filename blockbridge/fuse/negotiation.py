"""INIT: what the kernel offers, what we ask for, what the connection then uses.

The kernel sends its protocol version, readahead limit and the capability flags it
supports; the reply names the version both use (the smaller minor), the flags we want out
of those offered, and our limits.  The kernel then clamps some of them itself: an
unprivileged daemon's ``max_background`` and ``congestion_threshold`` at the fuse module's
``max_user_bgreq`` and ``max_user_congthresh``, ``max_pages`` at
``/proc/sys/fs/fuse/max_pages_limit``.  The shell reads those files and passes them in
``Limits``, so that what ``negotiate`` reports is what the kernel uses.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass

from .protocol import Init

KERNEL_MAJOR = 7
KERNEL_MINOR = 38  # the newest protocol whose structures protocol.py knows

# fuse_init_in/out flags (flags2 << 32 above bit 31)
ASYNC_READ = 1 << 0
BIG_WRITES = 1 << 5
DO_READDIRPLUS = 1 << 13
ASYNC_DIO = 1 << 15
PARALLEL_DIROPS = 1 << 18
MAX_PAGES = 1 << 22
INIT_EXT = 1 << 30

WANTED = ASYNC_READ | BIG_WRITES | ASYNC_DIO | MAX_PAGES | PARALLEL_DIROPS | DO_READDIRPLUS
FLAG_NAMES = {ASYNC_READ: "ASYNC_READ", BIG_WRITES: "BIG_WRITES", ASYNC_DIO: "ASYNC_DIO",
              MAX_PAGES: "MAX_PAGES", PARALLEL_DIROPS: "PARALLEL_DIROPS",
              DO_READDIRPLUS: "DO_READDIRPLUS"}

# fuse_init_out; 24 bytes before protocol 7.23, 64 since
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")
INIT_OUT_COMPAT_SIZE = 24
PARALLEL_DIRECT_WRITES_MINOR = 36
OLD_MAX_PAGES = 32  # requests without FUSE_MAX_PAGES: 128 KiB


@dataclass(frozen=True)
class Limits:
    """What we ask for, and the kernel's limits as the shell read them (None: unknown,
    or not applying to us because we are privileged)."""

    max_write: int = 1 << 20
    max_readahead: int = 1 << 20
    max_background: int = 64
    congestion_threshold: int = 48
    page_size: int = 4096
    max_pages_limit: int | None = None
    user_max_background: int | None = None
    user_congestion_threshold: int | None = None

    @property
    def buffer_size(self) -> int:
        """A read buffer that holds the largest request: a WRITE of max_write bytes and
        its headers (the kernel refuses smaller reads once INIT is done)."""
        return max(self.max_write + self.page_size, 8192)


@dataclass(frozen=True)
class Negotiated:
    minor: int
    flags: int
    max_write: int
    max_pages: int
    max_readahead: int
    max_background: int
    congestion_threshold: int

    @property
    def parallel_direct_writes(self) -> bool:
        return self.minor >= PARALLEL_DIRECT_WRITES_MINOR

    @property
    def readdirplus(self) -> bool:
        return bool(self.flags & DO_READDIRPLUS)

    def describe(self) -> str:
        names = [name for bit, name in FLAG_NAMES.items() if self.flags & bit]
        return (f"FUSE 7.{self.minor}: max_write {self.max_write}, max_pages "
                f"{self.max_pages}, max_background {self.max_background}, "
                f"congestion_threshold {self.congestion_threshold}, max_readahead "
                f"{self.max_readahead}, {' '.join(names) or 'no flags'}")

    def status(self) -> dict[str, int | str | None]:
        return {"max_background": self.max_background, "reason": None,
                "congestion_threshold": self.congestion_threshold,
                "max_write": self.max_write, "protocol": f"7.{self.minor}"}


class Unsupported(Exception):
    """The kernel speaks a protocol we cannot: answer ``errno``."""

    def __init__(self, reason: str, err: int = errno.EPROTO) -> None:
        super().__init__(reason)
        self.errno = err


def negotiate(init: Init, limits: Limits) -> tuple[Negotiated | None, bytes]:
    """(what the connection uses, the INIT reply payload).  A kernel with a newer major
    version gets our version alone and sends INIT again (None then)."""
    if init.major > KERNEL_MAJOR:
        return None, INIT_OUT.pack(KERNEL_MAJOR, KERNEL_MINOR, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    if init.major < KERNEL_MAJOR or init.minor < 9:
        raise Unsupported(f"kernel FUSE protocol {init.major}.{init.minor} is too old "
                          "(7.9 or newer needed)")
    minor = min(init.minor, KERNEL_MINOR)
    flags = init.flags & WANTED
    page = limits.page_size
    if flags & MAX_PAGES:
        max_pages = max(1, min(limits.max_write // page, 0xFFFF))
        if limits.max_pages_limit is not None:
            max_pages = max(1, min(max_pages, limits.max_pages_limit))
    else:
        max_pages = OLD_MAX_PAGES
    max_write = max(4096, min(limits.max_write, max_pages * page))
    background = _clamp(limits.max_background, limits.user_max_background)
    congestion = min(_clamp(limits.congestion_threshold, limits.user_congestion_threshold),
                     background)
    readahead = min(init.max_readahead, limits.max_readahead)
    out = INIT_OUT.pack(KERNEL_MAJOR, minor, readahead, flags & 0xFFFFFFFF, background,
                        congestion, max_write, 1, max_pages if flags & MAX_PAGES else 0, 0,
                        flags >> 32)
    if minor < 23:
        out = out[:INIT_OUT_COMPAT_SIZE]
    return Negotiated(minor, flags, max_write, max_pages, readahead, background,
                      congestion), out


def _clamp(wanted: int, user_limit: int | None) -> int:
    value = wanted if user_limit is None else min(wanted, user_limit)
    return max(1, min(value, 0xFFFF))
