"""io_uring through its system calls: the ring memory, submission and completion entries.

No trio here (``uring.py`` puts a ring on the event loop).  The kernel interface is three
system calls, made with libc's ``syscall(2)`` through ``ctypes``:

- ``io_uring_setup(entries, params)`` makes a ring and fills ``struct io_uring_params``
  with the sizes and the offsets of each field inside the ring memory;
- the submission ring, the completion ring (one mapping where the kernel says
  ``IORING_FEAT_SINGLE_MMAP``) and the array of submission entries are mapped from the
  ring's file descriptor at fixed offsets;
- ``io_uring_enter`` submits the entries written since the last call (and waits for
  completions only while a ring is drained before it is closed);
- ``io_uring_register(IORING_REGISTER_EVENTFD)`` makes the kernel signal an eventfd for
  every completion it posts.

Submission entries are written with one precompiled ``struct.Struct`` into the mapped
array; the indirection array maps ring slot i to entry i once and for all.

Memory ordering.  The rings are shared with the kernel, which may post completions from
another CPU.  What this code relies on:

- Submission: no SQPOLL thread, so the kernel reads the submission tail and entries only
  inside ``io_uring_enter`` called by this same thread after the stores; program order
  is enough, and the kernel's head update, made during that call, is read after it.
- Completions: the kernel writes a completion entry, then stores the tail with release
  semantics; the reader must load the tail with acquire semantics before reading the
  entries, and store the head with release semantics after reading them (so the kernel
  does not overwrite an entry still being read).  On x86 (total store order) plain loads
  and stores have those semantics, so the tail and head are read and written through a
  memoryview.  On other processors the loads and stores go through libatomic's
  ``__atomic_load_4``/``__atomic_store_4`` (acquire, release); where libatomic is missing
  the ring is refused rather than used without ordering.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import platform
import struct
from collections.abc import Callable
from typing import NamedTuple

# system call numbers: one table for every architecture since Linux 5.1
SYS_SETUP, SYS_ENTER, SYS_REGISTER = 425, 426, 427
_KNOWN_MACHINES = {"x86_64", "amd64", "i386", "i686", "aarch64", "arm64", "armv7l", "armv8l",
                   "riscv64", "ppc64le", "ppc64", "s390x", "loongarch64"}
_TSO = platform.machine().lower() in {"x86_64", "amd64", "i386", "i686"}

IORING_SETUP_SUBMIT_ALL = 1 << 7  # go on submitting after an entry fails (5.18)
IORING_FEAT_SINGLE_MMAP = 1 << 0
IORING_FEAT_RW_CUR_POS = 1 << 3  # 5.6, the release that brought IORING_OP_READ/WRITE
IORING_ENTER_GETEVENTS = 1 << 0
IORING_REGISTER_EVENTFD = 4
IORING_OFF_SQ_RING = 0
IORING_OFF_CQ_RING = 0x8000000
IORING_OFF_SQES = 0x10000000

IORING_OP_FSYNC = 3
IORING_OP_READ = 22
IORING_OP_WRITE = 23
IORING_FSYNC_DATASYNC = 1 << 0

# struct io_uring_sqe (64 bytes): opcode, flags, ioprio, fd, off, addr, len, op flags
# (rw_flags, fsync_flags...), user_data, buf_index, personality, splice_fd_in, addr3, pad
SQE = struct.Struct("=BBHiQQIIQHHiQQ")
# struct io_uring_cqe (16 bytes): user_data, res, flags
CQE = struct.Struct("=QiI")
# struct io_uring_params (120 bytes): sq_entries, cq_entries, flags, sq_thread_cpu,
# sq_thread_idle, features, wq_fd, resv[3]; then io_sqring_offsets (head, tail,
# ring_mask, ring_entries, flags, dropped, array, resv1, user_addr) and io_cqring_offsets
# (head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1, user_addr)
PARAMS = struct.Struct("=10I8IQ8IQ")
_U32 = 0xFFFFFFFF

assert SQE.size == 64 and CQE.size == 16 and PARAMS.size == 120


class SQOffsets(NamedTuple):
    head: int
    tail: int
    ring_mask: int
    ring_entries: int
    flags: int
    dropped: int
    array: int


class CQOffsets(NamedTuple):
    head: int
    tail: int
    ring_mask: int
    ring_entries: int
    overflow: int
    cqes: int


class Params(NamedTuple):
    sq_entries: int
    cq_entries: int
    flags: int
    features: int
    sq: SQOffsets
    cq: CQOffsets


def encode_params(entries: int = 0, flags: int = 0) -> bytearray:
    """A ``struct io_uring_params`` for io_uring_setup: all zeros but ``flags``."""
    buf = bytearray(PARAMS.size)
    PARAMS.pack_into(buf, 0, entries, 0, flags, *([0] * 25))
    return buf


def decode_params(buf: bytes | bytearray) -> Params:
    f = PARAMS.unpack_from(buf)
    return Params(f[0], f[1], f[2], f[5], SQOffsets(*f[10:17]), CQOffsets(*f[19:25]))


class _Atomics:
    """Acquire loads and release stores of 32-bit words, through libatomic."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libatomic.so.1")
        self.load = lib["__atomic_load_4"]
        self.load.restype = ctypes.c_uint32
        self.load.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.store = lib["__atomic_store_4"]
        self.store.restype = None
        self.store.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int]


_ACQUIRE, _RELEASE = 2, 3  # __ATOMIC_ACQUIRE, __ATOMIC_RELEASE


def atomics() -> _Atomics | None:
    """libatomic's functions, or None where there is no libatomic."""
    try:
        return _Atomics()
    except (OSError, AttributeError):
        return None


class Queues:
    """The submission and completion rings in memory shared with the kernel.

    ``sq_ring``, ``cq_ring`` and ``sqes`` are writable buffers laid out as ``params``
    says (the same buffer for both rings where the kernel maps them together).  With
    ``ordered`` (x86) the shared words are read and written as plain memory; otherwise
    through ``atomic`` with acquire and release semantics.
    """

    def __init__(self, sq_ring: memoryview, cq_ring: memoryview, sqes: memoryview,
                 params: Params, ordered: bool = _TSO, atomic: _Atomics | None = None) -> None:
        if not ordered and atomic is None:
            raise ValueError("unordered ring memory needs atomic loads and stores")
        self._sq = sq_ring.cast("B").cast("I")
        self._cq_bytes = cq_ring.cast("B")
        self._cq = self._cq_bytes.cast("I")
        self._sqes = sqes.cast("B")
        sq, cq = params.sq, params.cq
        self._sq_head, self._sq_tail_at = sq.head // 4, sq.tail // 4
        self._cq_head_at, self._cq_tail_at = cq.head // 4, cq.tail // 4
        self.sq_entries = self._sq[sq.ring_entries // 4]
        self._sq_mask = self._sq[sq.ring_mask // 4]
        self.cq_entries = self._cq[cq.ring_entries // 4]
        self._cq_mask = self._cq[cq.ring_mask // 4]
        self._cqes = cq.cqes
        for i in range(self.sq_entries):  # ring slot i always holds entry i
            self._sq[sq.array // 4 + i] = i
        self._tail = self._sq[self._sq_tail_at]  # ours alone: the kernel only reads it
        self._cq_head = self._cq[self._cq_head_at]  # likewise
        self._load: Callable[[], int] = self._plain_cq_tail
        self._store: Callable[[int], None] = self._plain_cq_head
        self._anchors: list[object] = []
        if not ordered:
            assert atomic is not None
            self._atomic_words(atomic, cq.tail, cq.head)

    def _atomic_words(self, atomic: _Atomics, tail: int, head: int) -> None:
        anchor = ctypes.c_char.from_buffer(self._cq_bytes)  # keeps the mapping exported
        self._anchors.append(anchor)
        base = ctypes.addressof(anchor)
        load, store = atomic.load, atomic.store

        def load_tail() -> int:
            value: int = load(base + tail, _ACQUIRE)
            return value

        def store_head(value: int) -> None:
            store(base + head, value, _RELEASE)

        self._load, self._store = load_tail, store_head

    def _plain_cq_tail(self) -> int:
        value: int = self._cq[self._cq_tail_at]
        return value

    def _plain_cq_head(self, value: int) -> None:
        self._cq[self._cq_head_at] = value

    # ------------------------------------------------------------------ submission

    def unsubmitted(self) -> int:
        """Entries written but not yet taken by the kernel."""
        return (self._tail - self._sq[self._sq_head]) & _U32

    def push(self, opcode: int, fd: int, offset: int, addr: int, length: int,
             op_flags: int, user_data: int) -> None:
        """Write one submission entry and publish it (taken at the next enter)."""
        tail = self._tail
        if (tail - self._sq[self._sq_head]) & _U32 >= self.sq_entries:
            raise OSError(errno.EBUSY, "io_uring submission queue full")
        SQE.pack_into(self._sqes, (tail & self._sq_mask) * 64, opcode, 0, 0, fd, offset,
                      addr, length, op_flags, user_data, 0, 0, 0, 0, 0)
        self._tail = tail = (tail + 1) & _U32
        self._sq[self._sq_tail_at] = tail

    def take_back(self) -> list[int]:
        """Withdraw the entries the kernel has not taken; their user_data."""
        head = self._sq[self._sq_head]
        n = (self._tail - head) & _U32
        keys = [SQE.unpack_from(self._sqes, ((head + i) & self._sq_mask) * 64)[8]
                for i in range(n)]
        self._tail = head
        self._sq[self._sq_tail_at] = head
        return keys

    # ------------------------------------------------------------------ completions

    def reap(self) -> list[tuple[int, int, int]]:
        """Every completion posted so far, as (user_data, res, flags), and their slots
        given back to the kernel."""
        head = self._cq_head
        n = (self._load() - head) & _U32
        if not n:
            return []
        cqes, base, mask, unpack = self._cq_bytes, self._cqes, self._cq_mask, CQE.unpack_from
        done = [unpack(cqes, base + ((head + i) & mask) * 16) for i in range(n)]
        self._cq_head = head = (head + n) & _U32
        self._store(head)
        return done

    def release(self) -> None:
        """Let go of the ring memory (the mappings can be closed after this)."""
        self._anchors.clear()
        for view in (self._sq, self._cq, self._cq_bytes, self._sqes):
            view.release()


# ---------------------------------------------------------------------- system calls

_libc = ctypes.PyDLL(None, use_errno=True)  # calls that do not block keep the GIL
_sys_fast = _libc.syscall
_sys_wait = ctypes.CDLL(None, use_errno=True).syscall  # a blocking wait lets it go
for _fn in (_sys_fast, _sys_wait):
    _fn.restype = ctypes.c_long
    _fn.argtypes = [ctypes.c_long] * 7


def _check(res: int) -> int:
    if res < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return res


def setup(entries: int, flags: int) -> tuple[int, Params]:
    """io_uring_setup: the ring's file descriptor and what the kernel said of it."""
    params = (ctypes.c_char * PARAMS.size).from_buffer(encode_params(0, flags))
    fd = _check(_sys_fast(SYS_SETUP, entries, ctypes.addressof(params), 0, 0, 0, 0))
    return fd, decode_params(bytes(params))


def enter(fd: int, to_submit: int, min_complete: int = 0, flags: int = 0) -> int:
    """io_uring_enter, retried on EINTR; the number of entries the kernel took."""
    call = _sys_wait if flags & IORING_ENTER_GETEVENTS else _sys_fast
    while True:
        try:
            return _check(call(SYS_ENTER, fd, to_submit, min_complete, flags, 0, 0))
        except InterruptedError:
            continue


def register_eventfd(fd: int, efd: int) -> None:
    value = ctypes.c_int32(efd)
    _check(_sys_fast(SYS_REGISTER, fd, IORING_REGISTER_EVENTFD, ctypes.addressof(value), 1,
                     0, 0))


class Ring:
    """An io_uring: its file descriptor, mapped memory and queues.  Raises OSError where
    the kernel refuses it, ValueError where this machine is not supported."""

    def __init__(self, entries: int) -> None:
        machine = platform.machine().lower()
        if machine not in _KNOWN_MACHINES:
            raise ValueError(f"io_uring system call numbers are not known for {machine}")
        atomic = None if _TSO else atomics()
        if not _TSO and atomic is None:
            raise ValueError("no libatomic for the ring's acquire/release accesses")
        try:
            self.fd, params = setup(entries, IORING_SETUP_SUBMIT_ALL)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.fd, params = setup(entries, 0)  # before 5.18
        self.params = params
        self._maps: list[mmap.mmap] = []
        try:
            if not params.features & IORING_FEAT_RW_CUR_POS:
                raise OSError(errno.ENOSYS, "kernel older than 5.6 (no IORING_OP_READ)")
            sq_size = params.sq.array + params.sq_entries * 4
            cq_size = params.cq.cqes + params.cq_entries * CQE.size
            if params.features & IORING_FEAT_SINGLE_MMAP:
                sq_map = cq_map = self._map(max(sq_size, cq_size), IORING_OFF_SQ_RING)
            else:
                sq_map = self._map(sq_size, IORING_OFF_SQ_RING)
                cq_map = self._map(cq_size, IORING_OFF_CQ_RING)
            sqes = self._map(params.sq_entries * SQE.size, IORING_OFF_SQES)
            self.queues = Queues(memoryview(sq_map), memoryview(cq_map), memoryview(sqes),
                                 params, ordered=_TSO, atomic=atomic)
        except BaseException:
            self._unmap()
            os.close(self.fd)
            raise

    def _map(self, size: int, offset: int) -> mmap.mmap:
        m = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                      prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
        self._maps.append(m)
        return m

    def register_eventfd(self, efd: int) -> None:
        register_eventfd(self.fd, efd)

    def submit(self) -> int:
        """Hand every written entry to the kernel; how many it took."""
        n = self.queues.unsubmitted()
        return enter(self.fd, n) if n else 0

    def wait(self, min_complete: int) -> None:
        """Block until at least ``min_complete`` completions are in the ring."""
        enter(self.fd, 0, min_complete, IORING_ENTER_GETEVENTS)

    def close(self) -> None:
        if self.fd < 0:
            return
        self.queues.release()
        self._unmap()
        os.close(self.fd)
        self.fd = -1

    def _unmap(self) -> None:
        for m in self._maps:
            with contextlib.suppress(BufferError):  # a view outlived a failed setup
                m.close()
        self._maps.clear()
