"""The two FUSE engines behind one interface, for ``blockbridge mount``.

``blockbridge`` (the default) is ours: our own protocol code, ``mounting.py`` for the mount,
and INIT limits chosen by us (1 MiB requests, 64 background requests), with FALLOCATE
(discard), LSEEK (holes) and notifications (live LUN changes).  ``pyfuse3`` serves the same
``LunFS`` through libfuse, without those three.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import trio

from . import mounting
from .engine import FuseEngine
from .lunfs import LunFS
from .mounting import MountFailed
from .negotiation import Limits

ENGINES = ("blockbridge", "pyfuse3")
DEFAULT = "blockbridge"
MAX_PAGES_LIMIT = Path("/proc/sys/fs/fuse/max_pages_limit")
USER_LIMITS = Path("/sys/module/fuse/parameters")

__all__ = ["DEFAULT", "ENGINES", "Engine", "MountFailed", "kernel_limits", "open_engine"]


class Engine(Protocol):
    name: str

    async def mount(self, mountpoint: str, options: list[str], fsname: str) -> None:
        """Mount; MountFailed says why not."""

    async def serve(self, changed: Callable[[], None] = ...) -> None:
        """Answer the kernel until unmounted or stopped; ``changed`` is called when the
        status has something new to say."""

    def stop(self) -> None: ...

    async def close(self) -> None:
        """Unmount if still mounted and let the device go."""

    def status(self) -> dict[str, Any] | None: ...


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def kernel_limits(privileged: bool | None = None, pages_limit: Path = MAX_PAGES_LIMIT,
                  user_limits: Path = USER_LIMITS) -> Limits:
    """What we ask for at INIT, within what the kernel lets this process have."""
    if privileged is None:
        privileged = os.geteuid() == 0
    return Limits(
        page_size=os.sysconf("SC_PAGE_SIZE"),
        max_pages_limit=_read_int(pages_limit),
        user_max_background=None if privileged else _read_int(user_limits / "max_user_bgreq"),
        user_congestion_threshold=None if privileged else
        _read_int(user_limits / "max_user_congthresh"))


class BlockbridgeMount:
    name = "blockbridge"

    def __init__(self, fs: LunFS) -> None:
        self.fs = fs
        self.mounted: mounting.Mounted | None = None
        self.engine: FuseEngine | None = None

    async def mount(self, mountpoint: str, options: list[str], fsname: str) -> None:
        self.mounted = await trio.to_thread.run_sync(mounting.mount, mountpoint, options,
                                                     fsname)
        self.engine = FuseEngine(self.fs, self.mounted.fd, kernel_limits())

    async def serve(self, changed: Callable[[], None] = lambda: None) -> None:
        assert self.engine is not None
        async with trio.open_nursery() as nursery:
            async def report() -> None:
                assert self.engine is not None
                await self.engine.initialised.wait()
                changed()

            nursery.start_soon(report)
            await self.engine.serve()
            nursery.cancel_scope.cancel()

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()

    async def close(self) -> None:
        m, self.mounted = self.mounted, None
        if m is not None:
            await trio.to_thread.run_sync(mounting.unmount, m)
            mounting.close(m)

    def status(self) -> dict[str, Any] | None:
        if self.engine is None or self.engine.negotiated is None:
            return None
        return {"engine": self.name, **self.engine.negotiated.status()}


def open_engine(name: str, fs: LunFS) -> Engine:
    if name == "pyfuse3":
        from .pyfuse3_engine import Pyfuse3Mount

        return Pyfuse3Mount(fs)
    if name != "blockbridge":
        raise ValueError(f"unknown FUSE engine {name}")
    return BlockbridgeMount(fs)
