"""cachestat: whether a range of a file is in the page cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from blockbridge_target import pagecache

pytestmark = pytest.mark.skipif(not pagecache.available,
                                reason="no cachestat number known for this architecture")


def test_written_pages_are_cached_and_dropped_ones_are_not(disk_path: Path) -> None:
    path = disk_path / "f"
    path.write_bytes(os.urandom(1 << 20))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert pagecache.cached(fd, 0, 1 << 20)
        assert pagecache.cached(fd, 513, 4000)  # straddles two pages
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert not pagecache.cached(fd, 0, 1 << 20)  # disk_path: not a tmpfs
        os.pread(fd, 4096, 8192)  # one page back in
        assert pagecache.cached(fd, 8192, 4096)
        assert not pagecache.cached(fd, 8192, 8192)  # the next page is not
        assert not pagecache.cached(fd, 0, 0)
    finally:
        os.close(fd)
