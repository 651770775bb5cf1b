"""Raising the FUSE connection's background queue limits through fusectl."""

from __future__ import annotations

import os
from pathlib import Path

from blockbridge.fuse.tuning import (
    CONGESTION_THRESHOLD,
    MAX_BACKGROUND,
    connection_dir,
    raise_queue_limits,
)


def fake_connection(root: Path, number: int, max_background: int) -> Path:
    conn = root / str(number)
    conn.mkdir()
    (conn / "max_background").write_text(f"{max_background}\n")
    (conn / "congestion_threshold").write_text(f"{max_background * 3 // 4}\n")
    return conn


def test_directory_is_the_minor_number_of_an_anonymous_device(tmp_path: Path) -> None:
    assert connection_dir(os.makedev(0, 52), tmp_path) == tmp_path / "52"
    assert connection_dir(os.makedev(0, 300), tmp_path) == tmp_path / "300"


def test_limits_are_raised(tmp_path: Path) -> None:
    conn = fake_connection(tmp_path, 52, 12)
    said = raise_queue_limits(os.makedev(0, 52), tmp_path)
    assert said == f"FUSE max_background raised from 12 to {MAX_BACKGROUND}"
    assert (conn / "max_background").read_text().strip() == str(MAX_BACKGROUND)
    assert (conn / "congestion_threshold").read_text().strip() == str(CONGESTION_THRESHOLD)


def test_a_higher_limit_is_kept(tmp_path: Path) -> None:
    conn = fake_connection(tmp_path, 7, 256)
    assert raise_queue_limits(os.makedev(0, 7), tmp_path) == "FUSE max_background is 256"
    assert (conn / "max_background").read_text().strip() == "256"


def test_without_fusectl_it_says_why_and_does_not_raise(tmp_path: Path) -> None:
    said = raise_queue_limits(os.makedev(0, 9), tmp_path / "absent")
    assert said.startswith("FUSE max_background left at the kernel's default (")
    assert "No such file" in said
