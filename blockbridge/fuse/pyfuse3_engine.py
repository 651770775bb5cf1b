"""pyfuse3 as an engine for ``LunFS``, used only as published.

pyfuse3 has no FALLOCATE and no LSEEK handler, so on this engine hole punching, fstrim,
blkdiscard and SEEK_DATA/SEEK_HOLE do not reach the LUN; the kernel's own defaults apply
(no discard, the whole file is data).  Its INIT asks for no more than libfuse's defaults,
so the queue limit is raised afterwards through fusectl (``tuning.py``).  Handlers raise
only ``pyfuse3.FUSEError``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import pyfuse3
import trio

from .lunfs import TIMEOUT, FSError, LunFS
from .mounting import MountFailed
from .protocol import Attr
from .tuning import Tuning, raise_queue_limits

log = logging.getLogger(__name__)

T = TypeVar("T")
WORKERS = 48  # pyfuse3 tasks: the iSCSI command window (32) and synchronous requests


def _entry(a: Attr) -> pyfuse3.EntryAttributes:
    e = pyfuse3.EntryAttributes()
    e.st_ino = a.ino
    e.generation = 0
    e.entry_timeout = e.attr_timeout = TIMEOUT
    e.st_mode, e.st_nlink, e.st_size = a.mode, a.nlink, a.size
    e.st_blksize, e.st_blocks = a.blksize, a.blocks
    e.st_uid, e.st_gid = a.uid, a.gid
    e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = a.time_ns
    return e


def _sync(call: Callable[..., T], *args: Any) -> T:
    try:
        return call(*args)
    except FSError as exc:
        raise pyfuse3.FUSEError(exc.errno) from None


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: LunFS) -> None:
        super().__init__()
        self.fs = fs

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None
                      ) -> pyfuse3.EntryAttributes:
        return _entry(_sync(self.fs.getattr, inode))

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        return _entry(_sync(self.fs.lookup, parent_inode, name))

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        size = attr.st_size if fields.update_size else None
        return _entry(_sync(self.fs.setattr, inode, size))

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return _sync(self.fs.opendir, inode)

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        for name, attr, next_id in self.fs.readdir(fh, start_id):
            if not pyfuse3.readdir_reply(token, name, _entry(attr), next_id):
                break

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext
                   ) -> pyfuse3.FileInfo:
        fi = pyfuse3.FileInfo(fh=_sync(self.fs.open, inode, flags))
        fi.direct_io = True  # the target is the cache; avoid double caching under loop devices
        fi.keep_cache = False
        return fi

    # pyfuse3 replies with any contiguous buffer (its stub says bytes): no copy here.
    async def read(self, fh: int, off: int, size: int) -> memoryview:  # type: ignore[override]
        try:
            return await self.fs.read(fh, off, size)
        except FSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        try:
            return await self.fs.write(fh, off, memoryview(buf))
        except FSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    async def fsync(self, fh: int, datasync: bool) -> None:
        try:
            await self.fs.fsync(fh)
        except FSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    async def flush(self, fh: int) -> None:
        return None

    async def release(self, fh: int) -> None:
        return None

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = self.fs.statfs()
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = st.bsize
        s.f_blocks, s.f_bfree, s.f_bavail = st.blocks, st.bfree, st.bavail
        s.f_files, s.f_ffree, s.f_favail = st.files, st.ffree, st.ffree
        s.f_namemax = st.namelen
        return s


class Pyfuse3Mount:
    """The engine interface of ``engines.py`` over pyfuse3: one mount per process."""

    name = "pyfuse3"

    def __init__(self, fs: LunFS) -> None:
        self.fs = fs
        self.ops = Operations(fs)
        self.mountpoint = ""
        self.tuning: Tuning | None = None  # once the queue limits were looked at
        self._nursery: trio.Nursery | None = None
        self._initialised = False

    async def mount(self, mountpoint: str, options: list[str], fsname: str) -> None:
        opts = set(pyfuse3.default_options) - {"default_permissions"}
        opts |= {f"fsname={fsname}", "subtype=blockbridge", *options}
        try:
            pyfuse3.init(self.ops, mountpoint, opts)
        except RuntimeError as exc:
            raise MountFailed(str(exc)) from None
        self.mountpoint = mountpoint
        self._initialised = True

    async def serve(self, changed: Callable[[], None] = lambda: None) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.fs.notifier = self
            nursery.start_soon(self._tune_queue, changed)
            try:
                await pyfuse3.main(min_tasks=1, max_tasks=WORKERS)
            finally:
                self.fs.notifier = None
                nursery.cancel_scope.cancel()

    async def _tune_queue(self, changed: Callable[[], None]) -> None:
        # After the INIT handshake (INIT could reset the limits): a stat of the mount
        # point waits for it, served by the main loop.
        with trio.move_on_after(10):
            st = await trio.to_thread.run_sync(os.stat, self.mountpoint)
            self.tuning = raise_queue_limits(st.st_dev)
            log.log(logging.INFO if self.tuning.reason is None else logging.WARNING, "%s",
                    self.tuning.log_line())
            changed()

    def stop(self) -> None:
        pyfuse3.terminate()

    async def close(self) -> None:
        if self._initialised:
            self._initialised = False
            pyfuse3.close(unmount=True)

    def status(self) -> dict[str, Any] | None:
        return self.tuning.status() if self.tuning is not None else None

    def inval_inode(self, inode: int) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._invalidate_inode, inode)

    async def _invalidate_inode(self, inode: int) -> None:
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, inode)
        except OSError as exc:
            log.debug("invalidate_inode(%d): %s", inode, exc)

    def inval_entry(self, parent: int, name: bytes) -> None:
        pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)
