"""The FUSE file system: one directory per target, one file per LUN.

Each handler is a few lines; the block device does the work.  Handlers raise only
``pyfuse3.FUSEError``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from dataclasses import dataclass

import pyfuse3

from blockbridge.initiator.blockdev import BlockDevice
from blockbridge.initiator.errors import InitiatorError

from .errors import to_errno

log = logging.getLogger(__name__)


@dataclass
class Node:
    inode: int
    name: str
    parent: int
    device: BlockDevice | None = None  # None for directories


class LunFS(pyfuse3.Operations):
    """targets: {target_name: {lun_number: BlockDevice}}"""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, targets: dict[str, dict[int, BlockDevice]], *, read_only: bool = False):
        super().__init__()
        self.read_only = read_only
        self.nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: Node(pyfuse3.ROOT_INODE, "", 0)}
        self.children: dict[int, dict[str, int]] = {pyfuse3.ROOT_INODE: {}}
        self.uid, self.gid = os.getuid(), os.getgid()
        self.started = time.time_ns()
        nxt = pyfuse3.ROOT_INODE + 1
        for target, luns in sorted(targets.items()):
            dir_inode = nxt
            nxt += 1
            self.nodes[dir_inode] = Node(dir_inode, target, pyfuse3.ROOT_INODE)
            self.children[pyfuse3.ROOT_INODE][target] = dir_inode
            self.children[dir_inode] = {}
            for number, dev in sorted(luns.items()):
                self.nodes[nxt] = Node(nxt, f"lun{number}", dir_inode, dev)
                self.children[dir_inode][f"lun{number}"] = nxt
                nxt += 1

    def devices(self) -> list[tuple[str, BlockDevice]]:
        return [(f"{self.nodes[n.parent].name}/{n.name}", n.device)
                for n in self.nodes.values() if n.device is not None
                and self.children[n.parent].get(n.name) == n.inode]  # not removed

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.inode
        a.generation = 0
        a.entry_timeout = 60
        a.attr_timeout = 60
        if node.device is None:
            a.st_mode = stat.S_IFDIR | 0o755
            a.st_nlink = 2
            a.st_size = 0
        else:
            writable = not (self.read_only or node.device.read_only)
            a.st_mode = stat.S_IFREG | (0o600 if writable else 0o400)
            a.st_nlink = 1
            a.st_size = node.device.size
            a.st_blksize = max(node.device.block_size, 4096)
            a.st_blocks = node.device.size // 512
        a.st_uid, a.st_gid = self.uid, self.gid
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self.started
        return a

    def _node(self, inode: int) -> Node:
        node = self.nodes.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None
                      ) -> pyfuse3.EntryAttributes:
        return self._attr(self._node(inode))

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        text = os.fsdecode(name)
        if text == ".":
            return self._attr(self._node(parent_inode))
        if text == "..":
            return self._attr(self._node(self._node(parent_inode).parent or parent_inode))
        child = self.children.get(parent_inode, {}).get(text)
        if child is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(self.nodes[child])

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode not in self.children:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = sorted(self.children[fh].items())
        for i, (name, inode) in enumerate(entries[start_id:], start_id):
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attr(self.nodes[inode]),
                                         i + 1):
                break

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext
                   ) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.device is None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR) and (self.read_only or node.device.read_only):
            raise pyfuse3.FUSEError(errno.EROFS)
        # O_TRUNC is ignored, as for a block device: the LUN keeps its size and data.
        fi = pyfuse3.FileInfo(fh=inode)
        fi.direct_io = True  # the target is the cache; avoid double caching under loop devices
        fi.keep_cache = False
        return fi

    # pyfuse3 replies with any contiguous buffer (its stub says bytes): no copy here.
    async def read(self, fh: int, off: int, size: int) -> memoryview:  # type: ignore[override]
        dev = self._device(fh)
        try:
            return await dev.read(off, size)
        except InitiatorError as exc:
            log.error("read of %d bytes at %d failed: %s", size, off, exc)
            raise pyfuse3.FUSEError(to_errno(exc)) from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        dev = self._device(fh)
        if off >= dev.size:
            raise pyfuse3.FUSEError(errno.ENOSPC)
        buf = buf[: dev.size - off]
        try:
            return await dev.write(off, buf)
        except InitiatorError as exc:
            log.error("write of %d bytes at %d failed: %s", len(buf), off, exc)
            raise pyfuse3.FUSEError(to_errno(exc)) from None

    async def fsync(self, fh: int, datasync: bool) -> None:
        dev = self._device(fh)
        try:
            await dev.flush()
        except InitiatorError as exc:
            log.error("flush failed: %s", exc)
            raise pyfuse3.FUSEError(to_errno(exc)) from None

    async def flush(self, fh: int) -> None:
        return None

    async def release(self, fh: int) -> None:
        return None

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if fields.update_size and (node.device is None or
                                   attr.st_size not in (0, node.device.size)):
            raise pyfuse3.FUSEError(errno.EINVAL)  # a LUN's size is fixed
        # size 0 is how the kernel passes O_TRUNC: ignored, as block devices ignore it
        return self._attr(node)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        total = sum(dev.size for _, dev in self.devices())
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = total // 4096
        s.f_bfree = s.f_bavail = 0
        s.f_files = len(self.nodes)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # ------------------------------------------------- live LUN changes (minimal version)

    def _device(self, fh: int) -> BlockDevice:
        """The device of an open file; EIO once its LUN was removed (said once, in the
        log, when that was found)."""
        dev = self.nodes[fh].device
        assert dev is not None
        if dev.removed is not None:
            raise pyfuse3.FUSEError(errno.EIO)
        return dev

    def resized(self, target: str, lun: int) -> None:
        """The LUN has a new size: the kernel forgets the attributes it cached."""
        parent = self.children[pyfuse3.ROOT_INODE].get(target)
        inode = self.children[parent].get(f"lun{lun}") if parent is not None else None
        if inode is not None:
            with contextlib.suppress(OSError):  # ENOSYS: the kernel cannot be told
                pyfuse3.invalidate_inode(inode, attr_only=True)

    def luns_changed(self, target: str, luns: dict[int, BlockDevice]) -> None:
        """The target has these LUNs now: files come and go.  A removed LUN's node stays
        for the files still open (their device answers EIO); a new LUN gets a new inode."""
        parent = self.children[pyfuse3.ROOT_INODE].get(target)
        if parent is None:
            return
        entries = self.children[parent]
        for name, inode in list(entries.items()):
            if luns.get(int(name[3:])) is not self.nodes[inode].device:
                del entries[name]
                pyfuse3.invalidate_entry_async(parent, os.fsencode(name), ignore_enoent=True)
        for number, dev in sorted(luns.items()):
            name = f"lun{number}"
            if name not in entries:
                inode = max(self.nodes) + 1
                self.nodes[inode] = Node(inode, name, parent, dev)
                entries[name] = inode
        with contextlib.suppress(OSError):
            pyfuse3.invalidate_inode(parent, attr_only=True)
