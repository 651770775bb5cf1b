"""The file backend's event-loop fast paths: page-cache reads and inline whole-page writes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from blockbridge_target.backends import file as backend_file
from blockbridge_target.backends.file import FileBackend


def test_inline_writes_take_whole_pages_only(disk_path: Path) -> None:
    b = FileBackend(str(disk_path / "d.img"), create_size=1 << 20)
    try:
        assert b.write_cached(8192, memoryview(b"\1" * 4096))
        assert not b.write_cached(512, memoryview(b"\2" * 4096))  # not page-aligned
        assert not b.write_cached(4096, memoryview(b"\3" * 512))  # not a whole page
        data = (disk_path / "d.img").read_bytes()
        assert data[8192:12288] == b"\1" * 4096 and data[:8192] == bytes(8192)
        into = bytearray(4096)
        assert b.read_cached(8192, into) and into == b"\1" * 4096  # just written: cached
    finally:
        b.close()


def test_a_slow_inline_write_sends_the_next_ones_to_threads(
        disk_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend_file, "_SLOW_INLINE_WRITE", -1.0)  # every write is slow
    b = FileBackend(str(disk_path / "d.img"), create_size=1 << 20)
    try:
        assert b.write_cached(0, memoryview(bytes(4096)))  # this one is done inline ...
        assert not b.write_cached(0, memoryview(bytes(4096)))  # ... the next ones are not
        b._inline_writes_after = time.monotonic() - 1
        assert b.write_cached(0, memoryview(bytes(4096)))  # after the pause, inline again
    finally:
        b.close()
