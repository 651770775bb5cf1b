"""Suite-wide hooks and fixtures: the ``needs`` marker (tests/needs.py), ``disk_path``."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.needs import require, require_in_ci


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs(*tools): programs or facilities the test needs (tests/needs.py)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    wanted = [name for mark in item.iter_markers("needs") for name in mark.args]
    if wanted:
        require(*dict.fromkeys(wanted))


MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})


def filesystem_type(path: Path) -> str:
    """The type of the file system that holds PATH, from /proc/self/mounts."""
    best, kind = "", ""
    path = path.resolve()
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        point = fields[1].replace("\\040", " ")
        if (path == Path(point) or Path(point) in path.parents) and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


@pytest.fixture
def disk_path(tmp_path: Path) -> Iterator[Path]:
    """A fresh directory on a disk-backed file system, for tests of the page cache,
    RWF_NOWAIT or sendfile, which a tmpfs does not have: ``tmp_path`` itself, or one
    under /var/tmp when /tmp is a tmpfs (as on Debian 13 and Fedora)."""
    if filesystem_type(tmp_path) not in MEMORY_FILESYSTEMS:
        yield tmp_path
        return
    for parent in (Path("/var/tmp"), Path(__file__).resolve().parent):
        if parent.is_dir() and filesystem_type(parent) not in MEMORY_FILESYSTEMS:
            break
    else:
        require_in_ci("needs a directory on a disk-backed file system; /tmp and /var/tmp are "
                      "in memory")
    directory = Path(tempfile.mkdtemp(prefix="blockbridge-test-", dir=parent))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
