"""Live LUN changes end to end with real processes: a LUN grown on the target shows its
new size in the mount without a remount, also to a loop device on it; LUNs added to and
removed from ietd.conf appear and disappear as files."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.interop.daemons import RunningTarget, our_target
from tests.needs import needs

from .workload import bb, mounted

pytestmark = [pytest.mark.system, needs("/dev/fuse")]

IQN = "iqn.2026-11.test:live"
MiB = 1 << 20


def within(seconds: float, predicate: Callable[[], bool]) -> float:
    """How long ``predicate`` took to become true; fails after ``seconds``."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < seconds, f"not within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - start


def reload(t: RunningTarget, conf: Path, text: str) -> None:
    count = t.log().count("reloaded ")
    conf.write_text(text)
    t.process.send_signal(signal.SIGHUP)
    within(10, lambda: t.log().count("reloaded ") > count)


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def test_a_grown_lun_shows_its_new_size_without_a_remount(tmp_path: Path) -> None:
    disk = tmp_path / "d0.img"
    disk.write_bytes(bytes(16 * MiB))
    conf = tmp_path / "ietd.conf"
    conf.write_text(f"Target {IQN}\n  Lun 0 Path={disk}\n")
    log = tmp_path / "mount.log"
    with our_target(["-c", str(conf), "--portal", "127.0.0.1:0"], tmp_path) as t, \
            mounted(t.portal, tmp_path / "mnt", "--log-file", str(log)) as mnt:
        lun = mnt / IQN / "lun0"
        assert lun.stat().st_size == 16 * MiB  # cached by the kernel from here on
        loop = attach_loop(lun) if os.geteuid() == 0 else None
        try:
            subprocess.run(["truncate", "-s", "+64M", str(disk)], check=True)
            t.process.send_signal(signal.SIGHUP)
            # nothing reads or writes the LUN: the mount's idle check finds the change
            took = within(5, lambda: size_of(lun) == 80 * MiB)
            assert took < 5
            assert f"LUN 0 is now {80 * MiB} bytes (was {16 * MiB})" in log.read_text()
            if loop is not None:
                subprocess.run(["losetup", "-c", loop], check=True)
                assert loop_size(loop) == 80 * MiB
                with open(loop, "r+b") as f:  # the new end is there, through the loop
                    f.seek(80 * MiB - 4096)
                    f.write(b"\xee" * 4096)
                    f.flush()
                    os.fsync(f.fileno())
                with disk.open("rb") as f:
                    f.seek(80 * MiB - 4096)
                    assert f.read(4096) == b"\xee" * 4096
        finally:
            if loop is not None:
                subprocess.run(["losetup", "-d", loop], check=False)
        rescan = bb("rescan", str(mnt))
        assert rescan.returncode == 0 and rescan.stdout == "no change\n", rescan.stderr


def attach_loop(path: Path) -> str:
    r = subprocess.run(["losetup", "--find", "--show", str(path)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def loop_size(loop: str) -> int:
    return int(subprocess.run(["blockdev", "--getsize64", loop], capture_output=True,
                              text=True, check=True).stdout)


def test_luns_added_to_and_removed_from_the_configuration(tmp_path: Path) -> None:
    disks = [tmp_path / f"d{n}.img" for n in range(2)]
    for d in disks:
        d.write_bytes(bytes(4 * MiB))
    conf = tmp_path / "ietd.conf"
    one = f"Target {IQN}\n  Lun 0 Path={disks[0]}\n"
    two = one + f"  Lun 1 Path={disks[1]}\n"
    conf.write_text(one)
    log = tmp_path / "mount.log"
    with our_target(["-c", str(conf), "--portal", "127.0.0.1:0"], tmp_path) as t, \
            mounted(t.portal, tmp_path / "mnt", "--log-file", str(log)) as mnt:
        lun1 = mnt / IQN / "lun1"
        assert not lun1.exists()
        reload(t, conf, two)
        within(5, lun1.exists)
        assert sorted(os.listdir(mnt / IQN)) == ["lun0", "lun1"]
        fd = os.open(lun1, os.O_RDWR)
        try:
            os.pwrite(fd, b"\x11" * 4096, 0)
            assert disks[1].read_bytes()[:4096] == b"\x11" * 4096
            reload(t, conf, one)
            within(5, lambda: not lun1.exists())
            assert os.listdir(mnt / IQN) == ["lun0"]
            for attempt in (lambda: os.pread(fd, 4096, 0), lambda: os.pwrite(fd, b"x", 0)):
                with pytest.raises(OSError) as failed:
                    attempt()
                assert failed.value.errno == errno.EIO
        finally:
            os.close(fd)
        # the LUN that stayed is unharmed
        with (mnt / IQN / "lun0").open("r+b") as f:
            f.write(b"\x22" * 4096)
        assert disks[0].read_bytes()[:4096] == b"\x22" * 4096
        assert "reconnect" not in bb("status", str(mnt)).stdout
    text = log.read_text()
    assert f"{IQN}: LUN 1 appeared ({4 * MiB} bytes)" in text
    assert text.count("LUN 1 was removed from the target; its file answers EIO") == 1, text
