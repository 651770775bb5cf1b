"""The file backend's declarations and the page-cache access the I/O engine uses for it:
page-cache reads and inline whole-page writes on the event loop."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from blockbridge_target import pagecache
from blockbridge_target.backends.base import Calls, Fua
from blockbridge_target.backends.file import FileBackend
from blockbridge_target.pagecache import PageCacheAccess


def test_a_file_declares_what_it_has(disk_path: Path) -> None:
    b = FileBackend(str(disk_path / "d.img"), create_size=1 << 20)
    try:
        caps = b.caps
        assert caps.calls is Calls.BLOCKING and caps.can_write and caps.can_flush
        assert caps.can_fua is Fua.EMULATE and caps.can_extents
        assert caps.file is not None and caps.file.fileno() == b.fd
        assert caps.file.page_cache and caps.file.io_uring and caps.file.seek_data
        assert caps.can_trim == caps.file.punch_hole == caps.trim_zeroes
    finally:
        b.close()
    ro = FileBackend(str(disk_path / "d.img"), read_only=True)
    try:
        assert not ro.caps.can_write and not ro.caps.can_flush and not ro.caps.can_trim
    finally:
        ro.close()


def test_trim_zero_and_extents(disk_path: Path) -> None:
    b = FileBackend(str(disk_path / "d.img"), create_size=1 << 20)
    try:
        b.write(0, b"\1" * (1 << 20), fua=True)
        if not b.caps.can_trim:
            pytest.skip("the file system cannot punch holes")
        b.trim(64 << 10, 64 << 10)
        into = bytearray(64 << 10)
        b.read(64 << 10, into)
        assert into == bytes(64 << 10)
        assert b.extents(0) == (True, 64 << 10)
        assert b.extents(64 << 10) == (False, 64 << 10)
        b.zero(0, 4096, may_trim=False)
        b.read(0, into)
        assert into[:4096] == bytes(4096) and into[4096:] == b"\1" * (60 << 10)
    finally:
        b.close()


def test_inline_writes_take_whole_pages_only(disk_path: Path) -> None:
    b = FileBackend(str(disk_path / "d.img"), create_size=1 << 20)
    cache = PageCacheAccess(b.fileno)
    try:
        assert cache.write(8192, memoryview(b"\1" * 4096))
        assert not cache.write(512, memoryview(b"\2" * 4096))  # not page-aligned
        assert not cache.write(4096, memoryview(b"\3" * 512))  # not a whole page
        data = (disk_path / "d.img").read_bytes()
        assert data[8192:12288] == b"\1" * 4096 and data[:8192] == bytes(8192)
        into = bytearray(4096)
        assert cache.read(8192, into) and into == b"\1" * 4096  # just written: cached
    finally:
        b.close()


def test_reads_that_would_wait_are_refused(disk_path: Path) -> None:
    data = os.urandom(1 << 20)
    path = disk_path / "d.img"
    path.write_bytes(data)
    b = FileBackend(str(path))
    cache = PageCacheAccess(b.fileno)
    try:
        # A RWF_NOWAIT read of a page not in the cache starts reading it in, and when the
        # disk answers at once (a virtual disk whose host has the block cached) it may
        # still return the data: the page is dropped again until one read is refused.
        for attempt in range(20):
            os.fsync(b.fd)  # dirty pages stay in the cache
            os.posix_fadvise(b.fd, 0, 0, os.POSIX_FADV_DONTNEED)
            into, offset = bytearray(4096), attempt * 4096
            if not cache.read(offset, into):
                break  # refused: nothing read, the caller takes the slow way
            assert into == data[offset : offset + 4096]
        else:
            pytest.fail("20 reads of pages just dropped from the cache all returned data")
    finally:
        b.close()


def test_inline_writes_that_keep_being_slow_send_the_next_ones_to_threads(
        disk_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pagecache, "_SLOW_INLINE_WRITE", -1.0)  # every write is slow
    b = FileBackend(str(disk_path / "d.img"), create_size=1 << 20)
    cache = PageCacheAccess(b.fileno)
    try:
        for _ in range(pagecache._SLOW_WRITES):  # a slow write alone changes nothing
            assert cache.write(0, memoryview(bytes(4096)))
        assert not cache.write(0, memoryview(bytes(4096)))  # then the next ones wait
        cache._inline_writes_after = time.monotonic() - 1
        assert cache.write(0, memoryview(bytes(4096)))  # after the pause, inline again
    finally:
        b.close()


def test_slow_inline_writes_far_apart_keep_writes_inline(
        disk_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pagecache, "_SLOW_INLINE_WRITE", -1.0)
    monkeypatch.setattr(pagecache, "_SLOW_WINDOW", 0.0)  # none is recent enough to count
    b = FileBackend(str(disk_path / "d.img"), create_size=1 << 20)
    cache = PageCacheAccess(b.fileno)
    try:
        for _ in range(3 * pagecache._SLOW_WRITES):
            assert cache.write(0, memoryview(bytes(4096)))
    finally:
        b.close()


def test_one_stalled_inline_write_is_enough_and_pauses_grow_when_it_comes_again(
        disk_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = FileBackend(str(disk_path / "d.img"), create_size=1 << 20)
    cache = PageCacheAccess(b.fileno)
    try:
        cache._slow_write(time.monotonic(), 1.0)  # the disk held one write for a second
        first = cache._inline_writes_after - time.monotonic()
        assert 0 < first <= pagecache._INLINE_WRITE_PAUSE
        assert not cache.write(0, memoryview(bytes(4096)))
        cache._slow_write(cache._inline_writes_after + 0.1, 1.0)  # soon after the pause
        assert cache._pause == 2 * pagecache._INLINE_WRITE_PAUSE
    finally:
        b.close()
