"""`blockbridge mount` for real: FUSE, dd, loop devices and mkfs, against tgtd and our target."""

from __future__ import annotations

import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from blockbridge.fuse.tuning import (
    CONGESTION_THRESHOLD,
    MAX_BACKGROUND,
    connection_dir,
    fusectl_mounts,
)
from tests.interop.daemons import our_target, tgtd
from tests.nbdkit import nbdkit
from tests.needs import needs

from .fusectl import UNMOUNTED_STATUS, fusectl_mounted, wait_for_queue_line
from .workload import bb, filesystem_round_trip, fio_result, mounted

pytestmark = [
    pytest.mark.system,
    needs("/dev/fuse"),
]
root_only = needs("root")

T1 = "iqn.2026-11.test.tgt:one"
T2 = "iqn.2026-11.test.tgt:two"


def sparse(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


@needs("tgtd", "tgtadm")
def test_three_luns_of_tgtd_as_files(tmp_path: Path, fuse_engine: str) -> None:
    a = sparse(tmp_path / "a.img", 32 << 20)
    b = sparse(tmp_path / "b.img", 16 << 20)
    c = sparse(tmp_path / "c.img", 8 << 20)
    with tgtd({T1: [a, b], T2: [c]}) as t, mounted(t.portal, tmp_path / "mnt") as mnt:
        listing = bb("discover", "--luns", t.portal).stdout
        assert f"{t.portal},1 {T1}" in listing and f"{t.portal},1 {T2}" in listing
        assert "lun2: 16777216 bytes" in listing and "lun0" not in listing
        files = sorted(p.relative_to(mnt).as_posix() for p in mnt.glob("*/*"))
        assert files == [f"{T1}/lun1", f"{T1}/lun2", f"{T2}/lun1"]
        assert (mnt / T1 / "lun1").stat().st_size == 32 << 20
        assert (mnt / T1 / "lun2").stat().st_size == 16 << 20
        assert (mnt / T2 / "lun1").stat().st_size == 8 << 20
        payload = os.urandom(3 << 20)
        target = mnt / T1 / "lun2"
        subprocess.run(["dd", f"of={target}", "bs=1M", "seek=2", "conv=notrunc,fsync",
                        "status=none"], input=payload, check=True)
        assert b.read_bytes()[2 << 20 : 5 << 20] == payload
        assert target.read_bytes()[2 << 20 : 5 << 20] == payload
        # zero-filling a region deallocates it in tgtd's sparse file (thin provisioning)
        before = allocated(b)
        subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", "seek=2", "count=3",
                        "conv=notrunc,fsync", "status=none"], check=True)
        assert allocated(b) < before
        assert b.read_bytes()[2 << 20 : 5 << 20] == bytes(3 << 20)
        status = bb("status", str(mnt))
        assert f"{T1}/lun2" in status.stdout and "connected" in status.stdout


needs_fs_tools = needs("mkfs.ext4", "losetup")


@root_only
@needs_fs_tools
@needs("debugfs")
def test_loop_device_and_filesystem_on_our_target(tmp_path: Path, fuse_engine: str) -> None:
    iqn = "iqn.2026-11.test:fs"
    disk = tmp_path / "fs.img"
    args = ["--disk", str(disk), "--size", "64M", "--target-name", iqn, "--portal",
            "127.0.0.1:0"]
    with our_target(args, tmp_path) as t, mounted(t.portal, tmp_path / "mnt") as mnt:
        queue = wait_for_queue_line(lambda: bb("status", str(mnt)).stdout)
        if fuse_engine == "blockbridge":  # asked for at INIT
            assert queue == f"FUSE max_background {MAX_BACKGROUND}"
        else:  # with or without fusectl on this machine: the status says which
            assert queue in (f"FUSE max_background {MAX_BACKGROUND}", UNMOUNTED_STATUS)
            assert (queue == UNMOUNTED_STATUS) == (fusectl_mounts() == [])
        data = filesystem_round_trip(mnt / iqn / "lun0", tmp_path)
    # the file system, with our file, is in the backing file
    out = subprocess.run(["debugfs", "-R", "cat /data.bin", str(disk)], capture_output=True)
    assert out.stdout == data


@root_only
def test_the_queue_limit_is_raised_through_fusectl_wherever_it_is_mounted(tmp_path: Path
                                                                          ) -> None:
    iqn = "iqn.2026-11.test:queue"
    args = ["--disk", str(tmp_path / "q.img"), "--size", "8M", "--target-name", iqn,
            "--portal", "127.0.0.1:0"]
    with fusectl_mounted() as connections, our_target(args, tmp_path) as t, \
            mounted(t.portal, tmp_path / "mnt", "--log-file", str(tmp_path / "m.log"),
                    "--fuse-engine", "pyfuse3") as mnt:
        queue = wait_for_queue_line(lambda: bb("status", str(mnt)).stdout)
        conn = connection_dir(mnt.stat().st_dev, connections)
        assert queue == f"FUSE max_background {MAX_BACKGROUND}"
        assert (conn / "max_background").read_text().strip() == str(MAX_BACKGROUND)
        assert (conn / "congestion_threshold").read_text().strip() == \
            str(CONGESTION_THRESHOLD)
    log = (tmp_path / "m.log").read_text()
    assert log.count("FUSE max_background") == 1
    assert f"FUSE max_background raised from 12 to {MAX_BACKGROUND}" in log


@root_only
@needs_fs_tools
@needs("tgtd", "tgtadm")
def test_loop_device_and_filesystem_on_tgtd(tmp_path: Path, fuse_engine: str) -> None:
    disk = sparse(tmp_path / "tgt-fs.img", 64 << 20)
    with tgtd({T1: [disk]}) as t, mounted(t.portal, tmp_path / "mnt") as mnt:
        filesystem_round_trip(mnt / T1 / "lun1", tmp_path)


def test_mount_failures_are_one_line_and_leave_nothing(tmp_path: Path, fuse_engine: str
                                                       ) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    from tests.interop.daemons import free_port

    closed = free_port()
    r = bb("mount", f"127.0.0.1:{closed}", str(mnt))
    assert r.returncode != 0
    assert r.stderr.strip() == f"blockbridge: cannot connect to 127.0.0.1:{closed}: " \
                               "Connection refused"
    assert not os.path.ismount(mnt)
    r = bb("mount", "127.0.0.1:1", str(tmp_path / "missing"))
    assert r.returncode != 0 and "does not exist" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    iqn = "iqn.2026-11.test:errors"
    args = ["--disk", str(tmp_path / "e.img"), "--size", "8M", "--target-name", iqn,
            "--portal", "127.0.0.1:0"]
    with our_target(args, tmp_path) as t:
        r = bb("mount", t.portal, str(mnt), "--target", "iqn.2026-11.test:unknown")
        assert r.returncode != 0
        assert "target iqn.2026-11.test:unknown is not offered" in r.stderr
        assert not os.path.ismount(mnt)
        with mounted(t.portal, mnt):
            again = bb("mount", t.portal, str(mnt))
            assert again.returncode != 0 and "already a mount point" in again.stderr
    assert not os.path.ismount(mnt)


def test_discard_deallocates_on_the_target(tmp_path: Path, fuse_engine: str) -> None:
    iqn = "iqn.2026-11.test:discard"
    disk = tmp_path / "t.img"
    args = ["--disk", str(disk), "--size", "32M", "--target-name", iqn, "--portal",
            "127.0.0.1:0"]
    with our_target(args, tmp_path) as t, mounted(t.portal, tmp_path / "mnt") as mnt:
        lun = mnt / iqn / "lun0"
        subprocess.run(["dd", "if=/dev/urandom", f"of={lun}", "bs=1M", "count=16",
                        "conv=notrunc,fsync", "status=none"], check=True)
        before = allocated(disk)
        r = bb("discard", str(lun), "--offset", str(4 << 20), "--length", str(8 << 20))
        assert r.returncode == 0, r.stderr
        assert allocated(disk) <= before - (8 << 20)
        with lun.open("rb") as f:
            f.seek(4 << 20)
            assert f.read(8 << 20) == bytes(8 << 20)
        status = bb("status", str(mnt)).stdout
        assert "writes" in status and "16777216 B" in status
    bad = bb("discard", str(tmp_path / "not-a-lun"))
    assert bad.returncode == 1 and "is not a LUN file" in bad.stderr


def test_many_requests_at_once_and_an_unmount_from_outside(tmp_path: Path, fuse_engine: str
                                                           ) -> None:
    """64 concurrent readers and writers on one LUN file (many requests in flight at
    once), then `fusermount3 -u`: the mount process ends by itself."""
    iqn = "iqn.2026-11.test:intake"
    disk = tmp_path / "t.img"
    args = ["--disk", str(disk), "--size", "16M", "--target-name", iqn, "--portal",
            "127.0.0.1:0"]
    blocks = [os.urandom(4096) for _ in range(256)]
    with our_target(args, tmp_path) as t:
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        r = bb("mount", t.portal, str(mnt))
        assert r.returncode == 0, r.stderr
        try:
            pid = int(re.findall(r"pid (\d+)\)", bb("status", str(mnt)).stdout)[0])
            fd = os.open(mnt / iqn / "lun0", os.O_RDWR)
            try:
                with ThreadPoolExecutor(64) as pool:
                    list(pool.map(lambda i: os.pwrite(fd, blocks[i], i * 65536), range(256)))
                    back = list(pool.map(lambda i: os.pread(fd, 4096, i * 65536), range(256)))
            finally:
                os.close(fd)
            assert back == blocks
            subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
            deadline = time.monotonic() + 10
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not os.path.exists(f"/proc/{pid}"), "the mount process is still running"
            gone = bb("status", str(mnt))  # its record went with it
            assert "is not a running blockbridge mount" in gone.stderr, gone.stderr
        finally:
            if mnt.is_mount():
                bb("umount", str(mnt))
    data = disk.read_bytes()
    assert [data[i * 65536 : i * 65536 + 4096] for i in range(256)] == blocks


@root_only
def test_a_killed_mount_process_leaves_no_dead_mount_point(tmp_path: Path) -> None:
    """Root's mount(2) mount is guarded by our watchdog, a user's by fusermount3's
    auto_unmount (tests/system/test_unprivileged.py): SIGKILL, and the mount is gone."""
    iqn = "iqn.2026-11.test:killed"
    args = ["--disk", str(tmp_path / "k.img"), "--size", "8M", "--target-name", iqn,
            "--portal", "127.0.0.1:0"]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with our_target(args, tmp_path) as t:
        r = bb("mount", "--fuse-engine", "blockbridge", t.portal, str(mnt))
        assert r.returncode == 0, r.stderr
        try:
            pid = int(re.findall(r"pid (\d+)\)", bb("status", str(mnt)).stdout)[0])
            assert (mnt / iqn / "lun0").stat().st_size == 8 << 20
            os.kill(pid, 9)
            deadline = time.monotonic() + 10
            while os.path.ismount(mnt) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not os.path.ismount(mnt)
            assert mnt.is_dir() and list(mnt.iterdir()) == []  # not "not connected"
        finally:
            if os.path.ismount(mnt):
                subprocess.run(["umount", "-l", str(mnt)], check=False)


@needs("fio", "nbdkit", "libnbd-python")
def test_fio_verify_through_our_target_over_nbdkit_memory(tmp_path: Path) -> None:
    """blockbridge mount, over our target, over an NBD export (Type=nbd): fio writes a
    checksummed pattern through the LUN file and reads every block back."""
    iqn = "iqn.2026-11.test:nbd"
    with nbdkit(tmp_path, "memory", "64M") as export:
        args = ["--lun", f"Type=nbd,Uri={export.uri}", "--target-name", iqn,
                "--portal", "127.0.0.1:0"]
        with our_target(args, tmp_path) as t, mounted(t.portal, tmp_path / "mnt") as mnt:
            lun = str(mnt / iqn / "lun0").replace(":", "\\:")  # fio splits names at ':'
            output = tmp_path / "fio.json"
            fio = subprocess.Popen(
                ["fio", "--name=verify", f"--filename={lun}", "--size=48M",
                 "--rw=randwrite", "--bsrange=4k-256k", "--ioengine=psync", "--direct=1",
                 "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--fsync=16",
                 "--verify_state_save=0", "--output-format=json", f"--output={output}"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            result = fio_result(fio, output, timeout=300)
            assert t.process.poll() is None
    assert result["errors"] == 0
    assert result["written"] >= 48 << 20 and result["verified"] == result["written"]
