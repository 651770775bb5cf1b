"""Our FUSE engine: a trio shell over a /dev/fuse descriptor, serving a ``LunFS``.

One reader reads requests (non-blocking ``readv`` into buffers of a pool) and answers
what needs no I/O at once.  It is the handler of a ``Poller``, which serves the device
and the sessions' sockets between trio's passes, so that a request and the target's
answer each cost no pass of trio's scheduler.
Plain READs and WRITEs start without a task and are answered from the session's
completion callback; FSYNC, FALLOCATE, LSEEK and whatever did not work out that way each
run as a task, so many are in flight; a task answers with one ``writev`` of the header
and the data, as soon as its block device call returns.  Only a WRITE keeps its buffer
(its data is a view of it) until it is answered; every other request gives it back once
decoded.  INTERRUPT cancels the request it names, which then answers EINTR, if it has
not finished half a second later.  Notifications to the kernel (rare: a LUN resized,
added or removed) are written from a worker thread, because the kernel may make that
write wait for a lock a request in our own loop holds.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from blockbridge.poller import Poller

from . import protocol as P
from .lunfs import TIMEOUT, FSError, LunFS
from .negotiation import Limits, Negotiated, Unsupported, negotiate

log = logging.getLogger(__name__)

FAIR_SHARE = 16  # requests read in a row before other tasks get a turn
GRACE = 5.0  # seconds requests in flight get to finish once reading stops
INTERRUPT_GRACE = 0.5  # seconds an interrupted request gets to finish before EINTR
Reply = list[P.Buffer]


def _nothing() -> None:
    pass


class _Buffers:
    """Request buffers: anonymous mappings (pages are touched only as far as requests
    fill them), reused last-in first-out so the warm ones serve; at most ``limit``."""

    def __init__(self, size: int, limit: int) -> None:
        self.size, self.limit = size, limit
        self.free: list[mmap.mmap] = []
        self.count = 0
        self._returned = trio.Event()

    async def take(self) -> mmap.mmap:
        while not self.free and self.count >= self.limit:
            self._returned = trio.Event()
            await self._returned.wait()
        if self.free:
            return self.free.pop()
        return self.new()

    def new(self) -> mmap.mmap:
        self.count += 1
        return mmap.mmap(-1, self.size)

    def give(self, buf: mmap.mmap, reuse: bool = True) -> None:
        if reuse:
            self.free.append(buf)
        else:  # a view of it may still be in use (an interrupted write): let it go
            self.count -= 1
        self._returned.set()


class FuseEngine:
    """Serve ``fs`` on the /dev/fuse descriptor ``fd`` (owned by the caller)."""

    def __init__(self, fs: LunFS, fd: int, limits: Limits, *, buffers: int = 72) -> None:
        self.fs, self.fd, self.limits = fs, fd, limits
        self._poller: Poller | None = None
        self.negotiated: Negotiated | None = None
        self._buffers = _Buffers(limits.buffer_size, buffers)
        self._inflight: dict[int, trio.CancelScope] = {}
        # requests started without a task: unique -> how to abandon it, its buffer
        self._started: dict[int, tuple[Callable[[], None], mmap.mmap | None]] = {}
        self._nursery: trio.Nursery | None = None
        self._reader: trio.CancelScope | None = None
        self._stopped = False
        self.initialised = trio.Event()
        self._fast: dict[type[Any], Callable[[P.Header, Any], Reply | None]] = {
            P.Init: self._init, P.Destroy: self._destroy, P.Lookup: self._lookup,
            P.Forget: lambda h, op: None, P.GetAttr: self._getattr,
            P.SetAttr: self._setattr, P.Open: self._open, P.Release: self._release,
            P.ReadDir: self._readdir, P.Flush: self._ok, P.StatFs: self._statfs,
            P.Interrupt: self._interrupt, P.Unknown: self._unknown,
        }
        self._slow: dict[type[Any], Callable[[P.Header, Any], Awaitable[Reply]]] = {
            P.Read: self._read, P.Write: self._write, P.Fsync: self._fsync,
            P.Fallocate: self._fallocate, P.Lseek: self._lseek,
        }

    # ------------------------------------------------------------------ the loop

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Until the kernel ends the connection (unmount: ENODEV) or ``stop()``; then
        requests in flight get ``GRACE`` seconds to finish."""
        os.set_blocking(self.fd, False)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.fs.notifier = self
            task_status.started()
            with trio.CancelScope() as self._reader:
                if not self._stopped:
                    await self._polled()
            self.fs.notifier = None
            nursery.cancel_scope.deadline = trio.current_time() + GRACE

    def stop(self) -> None:
        """Stop reading requests (the ones in flight are still answered)."""
        self._stopped = True
        if self._poller is not None:
            self._poller.stop()  # it may be this call's caller: no checkpoint comes soon
        if self._reader is not None:
            self._reader.cancel()

    async def _polled(self) -> None:
        """Serve the device through a ``Poller`` (which the sessions' readers find and
        join).  While every buffer is taken, the device is left alone until one comes
        back."""
        poller = Poller()
        fd, buffers, push = self.fd, self._buffers, self.fs.push
        started, inflight = self._started, self._inflight

        def readable() -> None:
            for _ in range(FAIR_SHARE):
                if not buffers.free and buffers.count >= buffers.limit:
                    poller.remove(fd, readable)
                    assert self._nursery is not None
                    self._nursery.start_soon(self._resume, poller, readable)
                    break
                buf = buffers.free.pop() if buffers.free else buffers.new()
                try:
                    n = os.readv(fd, [buf])
                except OSError as exc:
                    buffers.give(buf)
                    if isinstance(exc, BlockingIOError):
                        break
                    if exc.errno in (errno.EINTR, errno.ENOENT):  # ENOENT: interrupted
                        continue  # before we read it
                    if exc.errno == errno.ENODEV:  # unmounted: the connection is over
                        poller.stop()
                        break
                    raise
                self._dispatch(buf, n)
                if len(started) == 1 and not inflight:
                    break  # depth 1: the kernel has no other request (epoll says if so)
            push()  # the commands of this batch go out in one write

        poller.add(fd, readable)
        poller.add_idle(push)  # before it waits: the commands of the last batch go out
        self._poller = poller
        try:
            await poller.run()
        finally:
            self._poller = None

    async def _resume(self, poller: Poller, readable: Callable[[], None]) -> None:
        self._buffers.give(await self._buffers.take())
        if poller.running:
            poller.add(self.fd, readable)

    def _dispatch(self, buf: mmap.mmap, n: int) -> None:
        view = memoryview(buf)
        keep = False
        try:
            header, body = P.parse_header(view, n)
            op = P.decode(header, body)
        except P.Malformed as exc:
            log.error("malformed FUSE request: %s", exc)
            if exc.unique is not None:
                self._send(P.error(exc.unique, exc.errno))
        else:
            kind = type(op)
            if kind is P.Read:
                if self._start_read(header, op):  # type: ignore[arg-type]
                    return  # the buffer is given back in finally
            elif kind is P.Write:
                keep = self._start_write(header, op, buf)  # type: ignore[arg-type]
                if keep:
                    return
            slow = self._slow.get(kind)
            if slow is not None:
                keep = isinstance(op, P.Write)
                assert self._nursery is not None
                self._nursery.start_soon(self._run, slow, header, op, buf if keep else None)
            else:
                try:
                    out = self._fast[type(op)](header, op)
                except FSError as err:
                    out = P.error(header.unique, err.errno)
                except Exception:  # a bug: say so, answer EIO, keep serving
                    log.exception("FUSE %s failed", type(op).__name__)
                    out = P.error(header.unique, errno.EIO)
                if out is not None:
                    self._send(out)
        finally:
            if not keep:
                view.release()
                self._buffers.give(buf)

    # Plain reads and writes start without a task and are answered from the session's
    # reader task when the target answers; what does not work out that way runs again
    # as a task (``_run``), which retries, reconnects and maps errors.

    def _start_read(self, header: P.Header, op: P.Read) -> bool:
        unique = header.unique

        def done(view: memoryview | None) -> None:
            if self._started.pop(unique, None) is None:
                return  # interrupted: answered already
            if view is None:
                self._spawn(self._read, header, op, None)
            else:
                self._send(P.reply_data(unique, view))

        self._started[unique] = (_nothing, None)  # done() may run before start_read returns
        started = self.fs.start_read(op.fh, op.offset, op.size, done,
                                     ahead=not op.flags & os.O_DIRECT)
        if started is None:
            del self._started[unique]
            return False
        if unique in self._started:
            self._started[unique] = (started, None)
        return True

    def _start_write(self, header: P.Header, op: P.Write, buf: mmap.mmap) -> bool:
        """True: started, and the buffer (which holds the data) stays taken until done."""
        unique = header.unique
        data = op.data

        def done(ok: bool) -> None:
            if self._started.pop(unique, None) is None:
                return  # interrupted: answered, and the buffer was let go
            if ok:
                self._send(P.reply(unique, P.write_out(len(data))))
                self._buffers.give(buf)
            else:
                self._spawn(self._write, header, op, buf)

        self._started[unique] = (_nothing, buf)  # done() may run before start_write returns
        started = self.fs.start_write(op.fh, op.offset, data, done)
        if started is None:
            del self._started[unique]
            return False
        if unique in self._started:
            self._started[unique] = (started, buf)
        return True

    def _spawn(self, handler: Callable[[P.Header, Any], Awaitable[Reply]], header: P.Header,
               op: object, buf: mmap.mmap | None) -> None:
        assert self._nursery is not None, "requests are read only while the engine serves"
        self._nursery.start_soon(self._run, handler, header, op, buf)

    async def _run(self, handler: Callable[[P.Header, Any], Awaitable[Reply]],
                   header: P.Header, op: object, buf: mmap.mmap | None) -> None:
        unique = header.unique
        out: Reply = []
        with trio.CancelScope() as scope:
            self._inflight[unique] = scope
            try:
                out = await handler(header, op)
            except FSError as err:
                out = P.error(unique, err.errno)
            except Exception:  # a bug: say so, answer EIO, keep serving
                log.exception("FUSE %s failed", type(op).__name__)
                out = P.error(unique, errno.EIO)
        del self._inflight[unique]
        interrupted = scope.cancelled_caught
        if interrupted:
            log.info("request %d interrupted", unique)
            out = P.error(unique, errno.EINTR)
        self._send(out)  # before any checkpoint: a read's data is valid until then
        if buf is not None:
            self._buffers.give(buf, reuse=not interrupted)

    def _send(self, buffers: Reply) -> None:
        try:
            os.writev(self.fd, buffers)
        except OSError as exc:
            # ENOENT: the request was interrupted and is gone; ENODEV: unmounted
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                log.error("cannot answer the kernel: %s", exc)

    # ------------------------------------------------------------------ notifications

    def inval_inode(self, inode: int) -> None:
        self._notify(P.notify_inval_inode(inode, 0, 0))

    def inval_entry(self, parent: int, name: bytes) -> None:
        self._notify(P.notify_inval_entry(parent, name))

    def _notify(self, buffers: Reply) -> None:
        if self._nursery is None or not self.initialised.is_set():
            return
        self._nursery.start_soon(self._write_notification, buffers)

    async def _write_notification(self, buffers: Reply) -> None:
        try:
            await trio.to_thread.run_sync(os.writev, self.fd, buffers, abandon_on_cancel=True)
        except OSError as exc:
            # ENOENT: the kernel does not know that inode or name: nothing to forget
            if exc.errno != errno.ENOENT:
                log.warning("cannot notify the kernel: %s", exc)

    # ------------------------------------------------------------------ handlers

    def _init(self, h: P.Header, op: P.Init) -> Reply:
        try:
            negotiated, payload = negotiate(op, self.limits)
        except Unsupported as exc:
            log.error("%s", exc)
            return P.error(h.unique, exc.errno)
        if negotiated is not None:
            self.negotiated = negotiated
            log.info("%s", negotiated.describe())
            self.initialised.set()
        return P.reply(h.unique, payload)

    def _destroy(self, h: P.Header, op: P.Destroy) -> Reply:
        self.stop()
        return P.reply(h.unique)

    def _ok(self, h: P.Header, op: object) -> Reply:
        return P.reply(h.unique)

    def _unknown(self, h: P.Header, op: P.Unknown) -> Reply:
        return P.error(h.unique, errno.ENOSYS)

    def _interrupt(self, h: P.Header, op: P.Interrupt) -> None:
        """The kernel sends INTERRUPT when the caller gets any signal, also one it handles
        and returns from (qemu-img gets such signals while it maps a file).  A request that
        finishes soon is answered as usual; one still running after ``INTERRUPT_GRACE``
        (a target that stopped answering, a process being killed) ends with EINTR."""
        if op.unique in self._inflight or op.unique in self._started:
            assert self._nursery is not None
            self._nursery.start_soon(self._interrupt_later, op.unique)
        # a request already answered (or never ours to run) needs nothing: no reply

    async def _interrupt_later(self, unique: int) -> None:
        await trio.sleep(INTERRUPT_GRACE)
        scope = self._inflight.get(unique)
        if scope is not None:
            scope.cancel()
        started = self._started.pop(unique, None)
        if started is not None:  # nobody waits for its answer: its buffer stays out of use
            abandon, buf = started
            abandon()
            if buf is not None:
                self._buffers.give(buf, reuse=False)
            log.info("request %d interrupted", unique)
            self._send(P.error(unique, errno.EINTR))

    def _lookup(self, h: P.Header, op: P.Lookup) -> Reply:
        attr = self.fs.lookup(h.nodeid, op.name)
        return P.reply(h.unique, P.entry_out(attr, TIMEOUT, TIMEOUT))

    def _getattr(self, h: P.Header, op: P.GetAttr) -> Reply:
        return P.reply(h.unique, P.attr_out(self.fs.getattr(h.nodeid), TIMEOUT))

    def _setattr(self, h: P.Header, op: P.SetAttr) -> Reply:
        return P.reply(h.unique, P.attr_out(self.fs.setattr(h.nodeid, op.size), TIMEOUT))

    def _open(self, h: P.Header, op: P.Open) -> Reply:
        if op.directory:
            return P.reply(h.unique, P.open_out(self.fs.opendir(h.nodeid), 0))
        fh = self.fs.open(h.nodeid, op.flags)
        flags = P.FOPEN_DIRECT_IO  # the target is the cache (and a loop device above)
        if self.negotiated is not None and self.negotiated.parallel_direct_writes:
            flags |= P.FOPEN_PARALLEL_DIRECT_WRITES
        return P.reply(h.unique, P.open_out(fh, flags))

    def _release(self, h: P.Header, op: P.Release) -> Reply:
        if not op.directory:
            self.fs.release(op.fh)
        return P.reply(h.unique)

    def _readdir(self, h: P.Header, op: P.ReadDir) -> Reply:
        entries = self.fs.readdir(op.fh, op.offset)
        return P.reply(h.unique, P.dirents(entries, op.size, op.plus, TIMEOUT))

    def _statfs(self, h: P.Header, op: P.StatFs) -> Reply:
        return P.reply(h.unique, P.statfs_out(self.fs.statfs(h.nodeid)))

    async def _read(self, h: P.Header, op: P.Read) -> Reply:
        return P.reply(h.unique, await self.fs.read(op.fh, op.offset, op.size))

    async def _write(self, h: P.Header, op: P.Write) -> Reply:
        return P.reply(h.unique, P.write_out(await self.fs.write(op.fh, op.offset, op.data)))

    async def _fsync(self, h: P.Header, op: P.Fsync) -> Reply:
        await self.fs.fsync(op.fh)
        return P.reply(h.unique)

    async def _fallocate(self, h: P.Header, op: P.Fallocate) -> Reply:
        await self.fs.fallocate(op.fh, op.mode, op.offset, op.length)
        return P.reply(h.unique)

    async def _lseek(self, h: P.Header, op: P.Lseek) -> Reply:
        return P.reply(h.unique, P.lseek_out(await self.fs.lseek(op.fh, op.offset,
                                                                  op.whence)))
