"""Type=nbd: a LUN served from an NBD export (nbdkit's plugins, qemu-storage-daemon...).

An asynchronous backend on libnbd (Debian's ``python3-libnbd``; it is not on PyPI).  One
connection carries every command: each call issues an ``aio_*`` request and waits for its
completion callback, and one trio system task drives the connection from libnbd's file
descriptor (``aio_get_fd``, ``aio_get_direction``, ``aio_notify_read/write``).  No thread
per request; many commands are in flight at once.

What the export offers (read-only, flush, FUA, trim, zero, block status, cache) becomes
the backend's declared capabilities.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Callable
from typing import Any

import trio

from .base import Backend, BackingStoreError, Buffer, Calls, Capabilities, Fua
from .registry import BackendType, Key, Opening

PACKAGE = "python3-libnbd"
_URI = re.compile(r"^nbds?(\+(unix|vsock|tcp))?://")


def _binding() -> Any:
    try:
        import nbd
    except ImportError:
        raise BackingStoreError(
            f"Type=nbd needs libnbd's Python binding: install the Debian package {PACKAGE} "
            "(scripts/bootstrap does), in a virtual environment made with "
            "--system-site-packages") from None
    return nbd


def parse_uri(text: str) -> str:
    if not _URI.match(text):
        raise ValueError(f"{text!r} is not an NBD URI: use nbd://HOST[:PORT]/EXPORT or "
                         "nbd+unix:///EXPORT?socket=PATH")
    return text


class NbdBackend:
    def __init__(self, uri: str, *, read_only: bool = False) -> None:
        nbd = _binding()
        self._nbd = nbd
        self.uri = uri
        h = self._h = nbd.NBD()
        h.set_handle_name("blockbridge-target")
        h.add_meta_context("base:allocation")
        try:
            h.connect_uri(uri)
        except nbd.Error as exc:
            del h, self._h
            raise BackingStoreError(f"cannot connect to {uri}: {exc.string}") from None
        self.size: int = h.get_size()
        if self.size <= 0:
            del h, self._h
            raise BackingStoreError(f"the NBD export {uri} is empty (size 0)")
        minimum = h.get_block_size(nbd.SIZE_MINIMUM)
        self.block_size = minimum if minimum > 512 else 512
        writable = not read_only and not h.is_read_only()
        self.caps = Capabilities(
            calls=Calls.ASYNC, can_write=writable, can_flush=writable and h.can_flush(),
            can_fua=Fua.NATIVE if writable and h.can_fua() else Fua.NONE,
            can_trim=writable and h.can_trim(), trim_zeroes=False,
            can_zero=writable and h.can_zero(),
            can_extents=bool(h.can_meta_context("base:allocation")), can_cache=h.can_cache())
        self.description = f"nbd {uri}"
        self._token: trio.lowlevel.TrioToken | None = None  # the run its pump tasks are in
        self._write_wanted = trio.Event()
        self._waiting: dict[int, Callable[[], None]] = {}  # cookie -> fail it
        self._closed = self._dead = False

    # ------------------------------------------------------------ driving the connection

    def _ensure_pump(self) -> None:
        token = trio.lowlevel.current_trio_token()
        if self._token is not token:
            self._token = token
            self._write_wanted = trio.Event()
            trio.lowlevel.spawn_system_task(self._pump, "read", name=f"nbd reader {self.uri}")
            trio.lowlevel.spawn_system_task(self._pump, "write", name=f"nbd writer {self.uri}")

    async def _pump(self, side: str) -> None:
        """Move bytes whenever libnbd wants to (``aio_get_direction``): one task waits for
        the descriptor to be readable, one for it to be writable when there is a request
        to send (``_wake`` says so), and each tells libnbd (``aio_notify_*``)."""
        h, nbd = self._h, self._nbd
        fd, token = h.aio_get_fd(), self._token
        wanted = nbd.AIO_DIRECTION_READ if side == "read" else nbd.AIO_DIRECTION_WRITE
        try:
            while not self._closed and self._token is token and not h.aio_is_dead():
                if not h.aio_get_direction() & wanted:
                    if side == "read":  # not connected for reading: nothing more to do
                        break
                    await self._write_wanted.wait()
                    self._write_wanted = trio.Event()
                    continue
                if side == "read":
                    await trio.lowlevel.wait_readable(fd)
                    h.aio_notify_read()
                else:
                    await trio.lowlevel.wait_writable(fd)
                    h.aio_notify_write()
        except (nbd.Error, OSError, trio.ClosedResourceError, trio.BusyResourceError):
            pass  # the connection is dead or closed
        finally:
            if self._token is token:
                self._fail_all()

    def _wake(self) -> None:
        """A request was issued: the writer sends what libnbd could not send at once."""
        if self._h.aio_get_direction() & self._nbd.AIO_DIRECTION_WRITE:
            self._write_wanted.set()

    def _fail_all(self) -> None:
        """The connection is gone: every command waiting for it fails now."""
        self._dead = True
        for failed in list(self._waiting.values()):
            failed()
        self._waiting.clear()
        self._write_wanted.set()

    async def _command(self, issue: Any, *args: Any, **kwargs: Any) -> None:
        """Issue one aio command and wait for its completion; OSError on failure."""
        nbd = self._nbd
        if self._dead or self._closed:
            raise OSError(errno.ENOTCONN, f"the NBD connection to {self.uri} is gone")
        self._ensure_pump()
        done = trio.Event()
        failure: list[int] = []

        def completed(error: Any) -> int:
            if error.value:
                failure.append(error.value)
            done.set()
            return 1  # retire the command

        def lost() -> None:
            failure.append(errno.ENOTCONN)
            done.set()

        try:
            cookie = issue(*args, completion=completed, **kwargs)
        except nbd.Error as exc:
            raise OSError(exc.errno or errno.EIO, f"NBD: {exc.string}") from None
        self._waiting[cookie] = lost
        self._wake()
        try:
            with trio.CancelScope(shield=True):  # the buffer must outlive the request
                await done.wait()
        finally:
            self._waiting.pop(cookie, None)
        if failure:
            raise OSError(failure[0], f"NBD {self.uri}: {os.strerror(failure[0])}")

    # ------------------------------------------------------------ the contract

    async def read(self, offset: int, into: bytearray) -> None:
        await self._command(self._h.aio_pread, into, offset)

    async def write(self, offset: int, data: Buffer, fua: bool = False) -> None:
        flags = self._nbd.CMD_FLAG_FUA if fua and self.caps.can_fua is Fua.NATIVE else 0
        await self._command(self._h.aio_pwrite, data, offset, flags=flags)

    async def flush(self) -> None:
        await self._command(self._h.aio_flush)

    async def trim(self, offset: int, length: int) -> None:
        await self._command(self._h.aio_trim, length, offset)

    async def zero(self, offset: int, length: int, may_trim: bool) -> None:
        flags = 0 if may_trim else self._nbd.CMD_FLAG_NO_HOLE
        await self._command(self._h.aio_zero, length, offset, flags=flags)

    async def cache(self, offset: int, length: int) -> None:
        await self._command(self._h.aio_cache, length, offset)

    async def extents(self, offset: int) -> tuple[bool, int]:
        found: list[tuple[bool, int]] = []

        def extent(context: str, start: int, entries: list[int], error: Any) -> int:
            if context == "base:allocation" and not found and len(entries) >= 2:
                found.append((not entries[1] & self._nbd.STATE_HOLE, entries[0]))
            return 0

        length = min(self.size - offset, 1 << 30)
        await self._command(self._h.aio_block_status, length, offset, extent)
        if not found:
            return True, length
        return found[0]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # (outside a trio run nobody waits on it; a dead connection has no descriptor)
        with contextlib.suppress(RuntimeError, self._nbd.Error):
            trio.lowlevel.notify_closing(self._h.aio_get_fd())
        self._fail_all()
        with contextlib.suppress(self._nbd.Error):
            self._h.shutdown()  # the handle itself goes with the object


def _open(opening: Opening) -> Backend:
    return NbdBackend(opening.options["uri"], read_only=opening.read_only)


TYPES = (BackendType(
    "nbd", "an NBD export, through libnbd (python3-libnbd)",
    (Key("Uri", parse_uri, required=True,
         meaning="nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH"),), _open),)
