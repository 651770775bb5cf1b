"""What only our FUSE engine does: discard (fstrim, blkdiscard on a loop device over a LUN
file reach the target as UNMAP), holes (SEEK_DATA/SEEK_HOLE from GET LBA STATUS) and
interrupts (a request stuck on a dead target ends when its process is killed)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.daemons import RunningTarget, free_port, our_target, stop, tgtd
from tests.needs import needs

from .desktop import DesktopUser, fuse_conf
from .workload import bb, mounted, start_target

pytestmark = [pytest.mark.system, needs("/dev/fuse")]
OURS = ("--fuse-engine", "blockbridge")
IQN = "iqn.2026-11.test:discard"
T1 = "iqn.2026-11.test.tgt:thin"
MiB = 1 << 20


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def sparse(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


@contextlib.contextmanager
def target(tmp_path: Path, size: str = "512M") -> Iterator[tuple[RunningTarget, Path]]:
    disk = tmp_path / "thin.img"
    args = ["--disk", str(disk), "--size", size, "--target-name", IQN, "--portal",
            "127.0.0.1:0"]
    with our_target(args, tmp_path) as t:
        yield t, disk


@contextlib.contextmanager
def loop_device(lun: Path) -> Iterator[str]:
    dev = subprocess.run(["losetup", "--find", "--show", "--direct-io=on", str(lun)],
                         capture_output=True, text=True, check=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def trim_round_trip(lun: Path, disk: Path, workdir: Path) -> None:
    """ext4 on a loop device over LUN: 256 MiB written, deleted, fstrim gives the space
    back on the target's backing file; blkdiscard then leaves it (almost) empty."""
    with loop_device(lun) as dev:
        name = Path(dev).name
        granularity = int(Path(f"/sys/block/{name}/queue/discard_granularity").read_text())
        assert granularity >= 512, "the loop device offers no discard"
        subprocess.run(["mkfs.ext4", "-q", "-E", "nodiscard", dev], check=True)
        fs = workdir / "fs"
        fs.mkdir()
        subprocess.run(["mount", dev, str(fs)], check=True)
        try:
            subprocess.run(["dd", "if=/dev/urandom", f"of={fs / 'big'}", "bs=1M", "count=256",
                            "conv=fsync", "status=none"], check=True)
            full = allocated(disk)
            assert full >= 256 * MiB
            (fs / "big").unlink()
            subprocess.run(["sync"], check=True)
            trim = subprocess.run(["fstrim", "-v", str(fs)], capture_output=True, text=True,
                                  check=True)
            assert "trimmed" in trim.stdout
            assert allocated(disk) < full - 200 * MiB, (full, allocated(disk))
        finally:
            subprocess.run(["umount", str(fs)], check=True)
        subprocess.run(["blkdiscard", "-f", dev], check=True)
        assert allocated(disk) < 4 * MiB, allocated(disk)


@needs("root", "losetup", "mkfs.ext4", "fstrim", "blkdiscard")
def test_fstrim_and_blkdiscard_on_a_loop_device_free_the_space_on_our_target(
        tmp_path: Path) -> None:
    with target(tmp_path) as (t, disk), mounted(t.portal, tmp_path / "mnt", *OURS) as mnt:
        trim_round_trip(mnt / IQN / "lun0", disk, tmp_path)
        status = bb("status", str(mnt)).stdout
        assert "errors 0" in status, status


@needs("root", "losetup", "mkfs.ext4", "fstrim", "blkdiscard", "tgtd", "tgtadm")
def test_fstrim_and_blkdiscard_on_a_loop_device_free_the_space_on_tgtd(tmp_path: Path
                                                                       ) -> None:
    disk = sparse(tmp_path / "tgt-thin.img", 512 * MiB)
    with tgtd({T1: [disk]}, thin=True) as t, mounted(t.portal, tmp_path / "mnt", *OURS) as mnt:
        trim_round_trip(mnt / T1 / "lun1", disk, tmp_path)


@needs("root", "losetup", "mkfs.ext4", "fstrim", "blkdiscard")
def test_a_users_allow_other_mount_takes_roots_fstrim(
        desktop_user: DesktopUser, tmp_path: Path) -> None:
    u = desktop_user
    mnt = u.home / "thin"
    with target(tmp_path) as (t, disk), fuse_conf("user_allow_other\n"), \
            u.mounted(t.portal, mnt, "-o", "allow_other", *OURS):
        trim_round_trip(mnt / IQN / "lun0", disk, tmp_path)


@needs("qemu-img")
def test_cp_sparse_and_qemu_img_map_see_the_holes_of_a_thin_lun(tmp_path: Path) -> None:
    with target(tmp_path, "64M") as (t, disk), \
            mounted(t.portal, tmp_path / "mnt", *OURS) as mnt:
        lun = mnt / IQN / "lun0"
        for at in (0, 20, 40):
            subprocess.run(["dd", "if=/dev/urandom", f"of={lun}", "bs=1M", "count=2",
                            f"seek={at}", "conv=notrunc,fsync", "status=none"], check=True)
        copy = tmp_path / "copy.img"
        subprocess.run(["cp", "--sparse=always", str(lun), str(copy)], check=True)
        assert copy.stat().st_size == 64 * MiB
        assert 6 * MiB <= allocated(copy) <= 8 * MiB
        assert copy.read_bytes() == disk.read_bytes()
        out = subprocess.run(["qemu-img", "map", "--output=json", "-f", "raw", str(lun)],
                             capture_output=True, text=True, check=True).stdout
        data = [(e["start"], e["length"]) for e in json.loads(out) if e["data"]]
        assert data == [(0, 2 * MiB), (20 * MiB, 2 * MiB), (40 * MiB, 2 * MiB)]


def test_a_read_stuck_on_a_dead_target_ends_on_sigkill_and_the_mount_recovers(
        tmp_path: Path) -> None:
    disk, port, mnt = tmp_path / "disk.img", free_port(), tmp_path / "mnt"
    iqn = "iqn.2026-11.test:interrupt"
    proc = start_target(disk, port, tmp_path, iqn, 0, size="16M")
    try:
        with mounted(f"127.0.0.1:{port}", mnt, "--replacement-timeout", "300",
                     "--nop-interval", "1", "--log-file", str(tmp_path / "m.log"), *OURS):
            lun = mnt / iqn / "lun0"
            subprocess.run(["dd", "if=/dev/urandom", f"of={lun}", "bs=1M", "count=1",
                            "conv=notrunc,fsync", "status=none"], check=True)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            dd = subprocess.Popen(["dd", f"if={lun}", "of=/dev/null", "bs=4k", "count=1",
                                   "skip=100", "status=none"])
            time.sleep(2)
            assert dd.poll() is None, "the read did not wait for the target"
            dd.send_signal(signal.SIGKILL)
            start = time.monotonic()
            assert dd.wait(10) == -signal.SIGKILL
            assert time.monotonic() - start < 5
            assert "interrupted" in (tmp_path / "m.log").read_text()
            proc = start_target(disk, port, tmp_path, iqn, 1, size="16M")
            back = subprocess.run(["dd", f"if={lun}", "bs=1M", "count=1", "status=none"],
                                  capture_output=True, timeout=60, check=True).stdout
            assert back == disk.read_bytes()[: MiB]
            assert "connected" in bb("status", str(mnt)).stdout
    finally:
        stop(proc)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
