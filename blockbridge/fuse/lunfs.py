"""The file system of a mount, whatever serves it: one directory per target, one file per
LUN.

``LunFS`` keeps the inode table and the attributes, and turns file operations into calls
of the LUN's ``BlockDevice``; failures leave it as ``FSError(errno)`` (one mapping, in
``errors.py``).  It knows nothing of the FUSE engine that calls it: our own
(``engine.py``) or pyfuse3 (``pyfuse3_engine.py``).  An engine that can tell the kernel
about changes sets ``notifier``; ``resized`` and ``luns_changed`` use it.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from blockbridge.initiator.blockdev import BlockDevice, CommandChannel, ReadDone, Started, WriteDone
from blockbridge.initiator.errors import InitiatorError

from .errors import to_errno
from .protocol import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    ROOT_ID,
    SEEK_DATA,
    SEEK_HOLE,
    Attr,
    FsStat,
)
from .readahead import Readahead

log = logging.getLogger(__name__)

T = TypeVar("T")
TIMEOUT = 60.0  # seconds the kernel may keep names and attributes
PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


class FSError(Exception):
    """A file operation fails with this errno."""

    def __init__(self, err: int) -> None:
        super().__init__(os.strerror(err))
        self.errno = err


class Notifier(Protocol):
    """How an engine tells the kernel to forget what it cached."""

    def inval_inode(self, inode: int) -> None: ...

    def inval_entry(self, parent: int, name: bytes) -> None: ...


@dataclass
class Node:
    inode: int
    name: str
    parent: int
    device: BlockDevice | None = None  # None for directories
    lun: int | None = None
    gone: bool = False  # a LUN the target no longer reports: I/O fails with EIO


class LunFS:
    """targets: {target_name: {lun_number: BlockDevice}}"""

    def __init__(self, targets: dict[str, dict[int, BlockDevice]], *,
                 read_only: bool = False) -> None:
        self.read_only = read_only
        self.nodes: dict[int, Node] = {ROOT_ID: Node(ROOT_ID, "", ROOT_ID)}
        self.children: dict[int, dict[str, int]] = {ROOT_ID: {}}
        self.uid, self.gid = os.getuid(), os.getgid()
        self.started = time.time_ns()
        self.notifier: Notifier | None = None
        self._next = ROOT_ID + 1
        self._unpushed: set[CommandChannel] = set()  # sessions with commands not yet sent
        self._streams: dict[int, Readahead] = {}  # LUN inode -> its reads without O_DIRECT
        for target, luns in sorted(targets.items()):
            directory = self._directory(target)
            for number, dev in sorted(luns.items()):
                self._add_lun(directory, number, dev)

    def _new_inode(self) -> int:
        self._next += 1
        return self._next - 1

    def _directory(self, target: str) -> int:
        inode = self.children[ROOT_ID].get(target)
        if inode is None:
            inode = self._new_inode()
            self.nodes[inode] = Node(inode, target, ROOT_ID)
            self.children[ROOT_ID][target] = inode
            self.children[inode] = {}
        return inode

    def _add_lun(self, directory: int, number: int, dev: BlockDevice) -> int:
        inode = self._new_inode()
        self.nodes[inode] = Node(inode, f"lun{number}", directory, dev, number)
        self.children[directory][f"lun{number}"] = inode
        return inode

    def devices(self) -> list[tuple[str, BlockDevice]]:
        return [(f"{self.nodes[n.parent].name}/{n.name}", n.device)
                for n in self.nodes.values() if n.device is not None and not n.gone]

    # ------------------------------------------------------------------ live changes

    def resized(self, target: str, lun: int) -> None:
        """The size of a LUN changed (its BlockDevice has the new one): the kernel
        forgets the attributes it holds, and asks again."""
        inode = self._lun_inode(target, lun)
        if inode is not None:
            self._drop_read_ahead(inode)
            if self.notifier is not None:
                self.notifier.inval_inode(inode)

    def luns_changed(self, target: str, luns: dict[int, BlockDevice]) -> None:
        """The LUNs of a target are now ``luns``: new ones appear as files, removed ones
        disappear (an open file of one fails with EIO), a LUN whose device changed is a
        new file."""
        directory = self._directory(target)
        entries = self.children[directory]
        for name, inode in list(entries.items()):
            node = self.nodes[inode]
            if node.lun not in luns or luns[node.lun] is not node.device:
                node.gone = True
                self._drop_read_ahead(inode)
                del entries[name]
                self._forget_entry(directory, name)
        for number, dev in sorted(luns.items()):
            if f"lun{number}" not in entries:
                self._add_lun(directory, number, dev)
                self._forget_entry(directory, f"lun{number}")  # a cached negative lookup
        if self.notifier is not None:
            self.notifier.inval_inode(directory)

    def _forget_entry(self, directory: int, name: str) -> None:
        if self.notifier is not None:
            self.notifier.inval_entry(directory, os.fsencode(name))

    def _lun_inode(self, target: str, lun: int) -> int | None:
        directory = self.children[ROOT_ID].get(target)
        if directory is None:
            return None
        return self.children[directory].get(f"lun{lun}")

    # ------------------------------------------------------------------ names, attributes

    def attr(self, node: Node) -> Attr:
        if node.device is None:
            return Attr(node.inode, stat.S_IFDIR | 0o755, nlink=2, uid=self.uid, gid=self.gid,
                        time_ns=self.started)
        dev = node.device
        writable = not (self.read_only or dev.read_only)
        size = 0 if node.gone else dev.size
        return Attr(node.inode, stat.S_IFREG | (0o600 if writable else 0o400), size=size,
                    blocks=size // 512, nlink=0 if node.gone else 1, uid=self.uid,
                    gid=self.gid, blksize=max(dev.block_size, 4096), time_ns=self.started)

    def node(self, inode: int) -> Node:
        node = self.nodes.get(inode)
        if node is None:
            raise FSError(errno.ENOENT)
        return node

    def getattr(self, inode: int) -> Attr:
        return self.attr(self.node(inode))

    def lookup(self, parent: int, name: bytes) -> Attr:
        text = os.fsdecode(name)
        if text == ".":
            return self.getattr(parent)
        if text == "..":
            return self.getattr(self.node(parent).parent)
        child = self.children.get(parent, {}).get(text)
        if child is None:
            raise FSError(errno.ENOENT)
        return self.attr(self.nodes[child])

    def setattr(self, inode: int, size: int | None) -> Attr:
        """Only the size can be asked for, and only the LUN's own (or 0, which is how
        the kernel passes O_TRUNC, ignored as block devices ignore it): a LUN's size is
        the target's to change (EPERM otherwise).  Modes and times are kept."""
        node = self.node(inode)
        if size is not None and (node.device is None or size not in (0, node.device.size)):
            raise FSError(errno.EPERM)
        return self.attr(node)

    def opendir(self, inode: int) -> int:
        if inode not in self.children:
            raise FSError(errno.ENOTDIR)
        return inode

    def readdir(self, inode: int, start: int) -> list[tuple[bytes, Attr, int]]:
        """(name, attributes, offset of the next entry) from entry ``start`` on."""
        entries = sorted(self.children.get(inode, {}).items())
        return [(os.fsencode(name), self.attr(self.nodes[child]), i + 1)
                for i, (name, child) in enumerate(entries[start:], start)]

    def open(self, inode: int, flags: int) -> int:
        node = self.node(inode)
        if node.device is None:
            raise FSError(errno.EISDIR)
        if node.gone:
            raise FSError(errno.EIO)
        if flags & (os.O_WRONLY | os.O_RDWR) and (self.read_only or node.device.read_only):
            raise FSError(errno.EROFS)
        # O_TRUNC is ignored, as for a block device: the LUN keeps its size and data.
        return inode

    def release(self, fh: int) -> None:
        """A LUN file was closed."""
        self._drop_read_ahead(fh)

    def statfs(self, inode: int = ROOT_ID) -> FsStat:
        """The block size of a LUN file's statfs is the LUN's discard granule: the loop
        driver takes it as the discard granularity of a loop device over the file."""
        devices = [dev for _, dev in self.devices()]
        node = self.nodes.get(inode)
        bsize = 4096
        if node is not None and node.device is not None and not node.gone:
            dev = node.device
            bsize = dev.block_size * (dev.unmap_granularity if dev.can_unmap else 1)
        total = sum(dev.size for dev in devices)
        return FsStat(blocks=total // bsize, bsize=bsize, files=len(self.nodes))

    # ------------------------------------------------------------------ I/O

    def _device(self, fh: int) -> BlockDevice:
        node = self.nodes.get(fh)
        if node is None or node.device is None:
            raise FSError(errno.EBADF)
        if node.gone:
            raise FSError(errno.EIO)
        return node.device

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except InitiatorError as exc:
            log.error("%s failed: %s", what, exc)
            raise FSError(to_errno(exc)) from None

    # Without a task: an engine starts plain reads and writes here and answers from the
    # callback; anything else, and anything that does not work out, takes the ordinary
    # way below (which raises FSError as it should).

    def _plain(self, fh: int) -> BlockDevice | None:
        node = self.nodes.get(fh)
        if node is None or node.gone:
            return None
        return node.device

    def start_read(self, fh: int, offset: int, size: int, done: ReadDone, *,
                   ahead: bool = False) -> Started | None:
        """Start a read without a task (see ``BlockDevice.start_read``), or None.  With
        ``ahead`` (a reader without O_DIRECT) a sequential reader's next read is asked
        for before it comes (see ``readahead.py``)."""
        dev = self._plain(fh)
        if dev is None or offset >= dev.size:
            return None
        length = min(size, dev.size - offset)
        if ahead:
            stream = self._streams.get(fh)
            if stream is None:
                stream = self._streams[fh] = Readahead(dev)
            started = stream.start_read(offset, length, done)
        else:
            started = dev.start_read(offset, length, done)
        if started is not None:
            self._unpushed.add(dev.session)
        return started

    def start_write(self, fh: int, offset: int, data: memoryview, done: WriteDone
                    ) -> Started | None:
        """Start a write without a task (see ``BlockDevice.start_write``), or None."""
        dev = self._plain(fh)
        if dev is None or self.read_only:
            return None
        self._drop_read_ahead(fh)
        started = dev.start_write(offset, data, done)
        if started is not None:
            self._unpushed.add(dev.session)
        return started

    def push(self) -> None:
        """Send the commands started since the last push (an engine calls it once per
        batch of requests, so they share a write)."""
        unpushed = self._unpushed
        while unpushed:
            unpushed.pop().push()

    async def read(self, fh: int, offset: int, size: int) -> memoryview:
        """The data, as a view valid until the next read of this LUN: reply with it
        before the next checkpoint."""
        dev = self._device(fh)
        return await self._call(f"read of {size} bytes at {offset}",
                                dev.read(offset, size))

    def _drop_read_ahead(self, fh: int) -> None:
        """What was read ahead for LUN file ``fh`` is not to be served (its data changes,
        or its reader closed it)."""
        stream = self._streams.get(fh)
        if stream is not None:
            stream.drop()

    async def write(self, fh: int, offset: int, data: memoryview) -> int:
        dev = self._device(fh)
        self._drop_read_ahead(fh)
        if offset >= dev.size:
            raise FSError(errno.ENOSPC)
        view = data[: dev.size - offset]
        return await self._call(f"write of {len(view)} bytes at {offset}",
                                dev.write(offset, view))

    async def fsync(self, fh: int) -> None:
        dev = self._device(fh)
        await self._call("flush", dev.flush())

    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        """PUNCH_HOLE|KEEP_SIZE deallocates (UNMAP) what it can and zeroes the rest;
        ZERO_RANGE zeroes (WRITE SAME, or writes); nothing else is supported."""
        dev = self._device(fh)
        if self.read_only or dev.read_only:
            raise FSError(errno.EROFS)
        self._drop_read_ahead(fh)
        if offset < 0 or length <= 0:
            raise FSError(errno.EINVAL)
        if mode & ~FALLOC_FL_KEEP_SIZE == FALLOC_FL_ZERO_RANGE:
            if offset + length > dev.size and not mode & FALLOC_FL_KEEP_SIZE:
                raise FSError(errno.ENOSPC)  # a LUN cannot grow
            await self._call(f"zeroing {length} bytes at {offset}",
                             dev.zero(offset, length))
        elif mode == PUNCH:
            await self._call(f"discard of {length} bytes at {offset}",
                             self._punch(dev, offset, length))
        else:
            raise FSError(errno.EOPNOTSUPP)

    async def _punch(self, dev: BlockDevice, offset: int, length: int) -> None:
        end = min(offset + length, dev.size)
        if end <= offset:
            return
        if not (dev.can_unmap and dev.zeroes_after_unmap):
            await dev.zero(offset, end - offset)  # reads zeros as a hole does; keeps space
            return
        granule = dev.block_size * dev.unmap_granularity
        first = -(-offset // granule) * granule
        last = end // granule * granule
        if first >= last:
            await dev.zero(offset, end - offset)
            return
        if offset < first:
            await dev.zero(offset, first - offset)
        await dev.discard(first, last - first)
        if last < end:
            await dev.zero(last, end - last)

    async def lseek(self, fh: int, offset: int, whence: int) -> int:
        """SEEK_DATA / SEEK_HOLE from the LUN's provisioning status (GET LBA STATUS):
        deallocated blocks that read back as zeros are holes.  A LUN that cannot say is
        all data."""
        dev = self._device(fh)
        if whence not in (SEEK_DATA, SEEK_HOLE):
            raise FSError(errno.EINVAL)
        if offset < 0:
            raise FSError(errno.EINVAL)
        if offset >= dev.size:
            raise FSError(errno.ENXIO)
        want_data = whence == SEEK_DATA
        bs = dev.block_size
        lba = offset // bs
        while lba < dev.blocks:
            found = await self._call("GET LBA STATUS", dev.lba_status(lba))
            if found is None:
                break  # no answer for these blocks: data from here on
            status, count = found
            is_data = not (status == 1 and dev.zeroes_after_unmap)
            if is_data == want_data:
                return max(offset, lba * bs)
            lba += max(count, 1)
        else:
            if want_data:
                raise FSError(errno.ENXIO)
            return dev.size
        return max(offset, lba * bs) if want_data else dev.size
