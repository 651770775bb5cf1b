"""Raising the FUSE connection's background queue limits through fusectl."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blockbridge.fuse import tuning
from blockbridge.fuse.tuning import (
    CONGESTION_THRESHOLD,
    CONNECTIONS,
    MAX_BACKGROUND,
    NOT_MOUNTED,
    Tuning,
    connection_dir,
    find_connections,
    fusectl_mounts,
    raise_queue_limits,
)


def fake_connection(root: Path, number: int, max_background: int) -> Path:
    conn = root / str(number)
    conn.mkdir()
    (conn / "max_background").write_text(f"{max_background}\n")
    (conn / "congestion_threshold").write_text(f"{max_background * 3 // 4}\n")
    return conn


def mountinfo(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


ROOT = "27 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw"
SYSFS = "23 27 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw"
USUAL = ("40 23 0:38 / /sys/fs/fuse/connections rw,nosuid,nodev,noexec,relatime shared:20 "
         "- fusectl fusectl rw")
ELSEWHERE = r"88 27 0:38 / /tmp/fuse\040ctl rw,relatime - fusectl none rw"
A_FUSE_MOUNT = "90 27 0:52 / /home/u/luns rw,nosuid,nodev - fuse.blockbridge bb:h:3260 rw"


def test_fusectl_is_found_in_mountinfo_wherever_it_is_mounted(tmp_path: Path) -> None:
    info = mountinfo(tmp_path, ROOT, SYSFS, A_FUSE_MOUNT, ELSEWHERE)
    assert fusectl_mounts(info) == [Path("/tmp/fuse ctl")]  # \040 is a space
    assert find_connections(info) == Path("/tmp/fuse ctl")


def test_the_usual_place_is_preferred(tmp_path: Path) -> None:
    info = mountinfo(tmp_path, ROOT, ELSEWHERE, SYSFS, USUAL)
    assert fusectl_mounts(info) == [Path("/tmp/fuse ctl"), CONNECTIONS]
    assert find_connections(info) == CONNECTIONS


def test_no_fusectl_mount(tmp_path: Path) -> None:
    assert find_connections(mountinfo(tmp_path, ROOT, SYSFS, A_FUSE_MOUNT)) is None
    assert find_connections(tmp_path / "unreadable") is None


def test_directory_is_the_minor_number_of_an_anonymous_device(tmp_path: Path) -> None:
    assert connection_dir(os.makedev(0, 52), tmp_path) == tmp_path / "52"
    assert connection_dir(os.makedev(0, 300), tmp_path) == tmp_path / "300"


def test_limits_are_raised(tmp_path: Path) -> None:
    conn = fake_connection(tmp_path, 52, 12)
    done = raise_queue_limits(os.makedev(0, 52), tmp_path)
    assert done == Tuning(MAX_BACKGROUND, 12)
    assert done.log_line() == f"FUSE max_background raised from 12 to {MAX_BACKGROUND}"
    assert done.status() == {"max_background": MAX_BACKGROUND, "reason": None}
    assert (conn / "max_background").read_text().strip() == str(MAX_BACKGROUND)
    assert (conn / "congestion_threshold").read_text().strip() == str(CONGESTION_THRESHOLD)


def test_a_higher_limit_is_kept(tmp_path: Path) -> None:
    conn = fake_connection(tmp_path, 7, 256)
    done = raise_queue_limits(os.makedev(0, 7), tmp_path)
    assert done.log_line() == "FUSE max_background is 256"
    assert done.status() == {"max_background": 256, "reason": None}
    assert (conn / "max_background").read_text().strip() == "256"


def test_a_normal_user_asks_for_no_more_than_the_kernel_allows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel refuses a value above max_user_bgreq from a user without CAP_SYS_ADMIN.
    limits = tmp_path / "parameters"
    limits.mkdir()
    (limits / "max_user_bgreq").write_text("40\n")
    (limits / "max_user_congthresh").write_text("30\n")
    conn = fake_connection(tmp_path, 5, 12)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    done = raise_queue_limits(os.makedev(0, 5), tmp_path, limits)
    assert done == Tuning(40, 12)
    assert (conn / "max_background").read_text().strip() == "40"
    assert (conn / "congestion_threshold").read_text().strip() == "30"
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # root: no such ceiling
    assert raise_queue_limits(os.makedev(0, 5), tmp_path, limits) == Tuning(MAX_BACKGROUND, 40)


def test_without_fusectl_it_says_what_it_costs_and_how_to_fix_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning, "MOUNTINFO", mountinfo(tmp_path, ROOT, SYSFS))
    done = raise_queue_limits(os.makedev(0, 9))
    assert done == Tuning(None, reason=NOT_MOUNTED)
    line = done.log_line()
    assert line.startswith("FUSE max_background left at the kernel's default: "
                           "fusectl is not mounted")
    assert "fewer requests in flight" in line
    assert line.endswith("(fix, as root: mount -t fusectl none /sys/fs/fuse/connections)")
    assert "\n" not in line
    assert done.status() == {"max_background": None, "reason": NOT_MOUNTED}


def test_a_connection_it_cannot_write_says_why(tmp_path: Path) -> None:
    missing = raise_queue_limits(os.makedev(0, 9), tmp_path)
    assert missing.max_background is None
    assert missing.reason == f"No such file or directory ({tmp_path / '9'})"
    assert missing.log_line().startswith("FUSE max_background left at the kernel's default: ")
    conn = fake_connection(tmp_path, 11, 12)
    (conn / "congestion_threshold").unlink()
    (conn / "congestion_threshold").mkdir()  # writing it fails after max_background
    half = raise_queue_limits(os.makedev(0, 11), tmp_path)
    assert half.max_background == MAX_BACKGROUND and half.before == 12
    assert half.reason is not None and half.reason.startswith("Is a directory")
    assert half.log_line().startswith(f"FUSE max_background left at {MAX_BACKGROUND}: ")
