"""The target is killed and restarted under a writer: the writer sees only a pause."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.interop.daemons import free_port, stop
from tests.needs import needs

from .workload import bb, start_target

pytestmark = [pytest.mark.system,
              needs("/dev/fuse"),
              pytest.mark.usefixtures("fuse_engine")]

IQN = "iqn.2026-11.test:recovery"


def test_kill_and_restart_the_target_twice_mid_write(tmp_path: Path) -> None:
    disk, port, mnt = tmp_path / "disk.img", free_port(), tmp_path / "mnt"
    mnt.mkdir()
    target = start_target(disk, port, tmp_path, IQN, 0, size="64M")
    r = bb("mount", f"127.0.0.1:{port}", str(mnt), "--replacement-timeout", "60")
    assert r.returncode == 0, r.stderr
    lun = mnt / IQN / "lun0"
    chunk, chunks = 256 << 10, 160  # 40 MiB of verified writes
    blobs = [hashlib.sha256(str(i).encode()).digest() * (chunk // 32) for i in range(chunks)]
    errors: list[BaseException] = []
    progress = [0]

    def writer() -> None:
        try:
            fd = os.open(lun, os.O_WRONLY)
            try:
                for i, blob in enumerate(blobs):
                    os.pwrite(fd, blob, i * chunk)
                    progress[0] = i + 1
                    time.sleep(0.005)
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for n in (1, 2):
            while progress[0] < 50 * n and thread.is_alive():
                time.sleep(0.01)
            target.send_signal(signal.SIGKILL)
            target.wait()
            time.sleep(1)
            target = start_target(disk, port, tmp_path, IQN, n, size="64M")
        thread.join(120)
        assert not thread.is_alive(), "the writer hung"
        assert errors == [], errors
        with lun.open("rb") as f:
            for i, blob in enumerate(blobs):
                assert f.read(chunk) == blob, f"chunk {i} differs after recovery"
        status = bb("status", str(mnt)).stdout
        assert "reconnect" in status
    finally:
        bb("umount", str(mnt))
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        stop(target)
    data = disk.read_bytes()
    assert all(data[i * chunk : (i + 1) * chunk] == blob for i, blob in enumerate(blobs))
