"""Faults under a real workload: ext4 on a loop device on a LUN file, fio writing and verifying
checksummed blocks, while the target is killed or the connection is cut.  The workload must
finish with no I/O error, no mismatch, a clean fsck and no error in the kernel log."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.proxy import FaultProxy
from tests.interop.daemons import free_port, stop
from tests.needs import needs

from .workload import (
    bb,
    fio_result,
    kernel_errors,
    kernel_log_lines,
    kill_hard,
    loop_filesystem,
    mounted,
    start_fio_verify,
    start_target,
)

pytestmark = [
    pytest.mark.system,
    needs("/dev/fuse"),
    needs("root"),
    needs("fio", "losetup", "mkfs.ext4", "e2fsck", "dmesg"),
    pytest.mark.usefixtures("fuse_engine"),
]

IQN = "iqn.2026-11.test:faults"


def test_target_killed_twice_under_a_filesystem_workload(tmp_path: Path) -> None:
    disk, port = tmp_path / "disk.img", free_port()
    target = start_target(disk, port, tmp_path, IQN)
    log_start = kernel_log_lines()
    try:
        with mounted(f"127.0.0.1:{port}", tmp_path / "mnt", "--nop-interval", "1",
                     "--replacement-timeout", "60") as mnt, \
                loop_filesystem(mnt / IQN / "lun0", tmp_path / "fs") as fs:
            fio = start_fio_verify(fs.directory, "32M", tmp_path / "fio.json",
                                   ("--loops=12",))
            for n in (1, 2):
                time.sleep(3)
                assert fio.poll() is None, "the workload ended before the fault"
                kill_hard(target)
                time.sleep(1)
                target = start_target(disk, port, tmp_path, IQN, n)
            result = fio_result(fio, tmp_path / "fio.json", timeout=300)
            assert result["errors"] == 0
            assert result["verified"] == result["written"] > 0
            assert "2 reconnect(s)" in bb("status", str(mnt)).stdout
        assert kernel_errors(fs.device, log_start) == []
    finally:
        stop(target)


def test_connection_cut_every_few_seconds_under_a_filesystem_workload(tmp_path: Path) -> None:
    disk, port = tmp_path / "disk.img", free_port()
    target = start_target(disk, port, tmp_path, IQN)
    log_start = kernel_log_lines()
    try:
        with FaultProxy("127.0.0.1", port) as proxy, \
                mounted(f"127.0.0.1:{proxy.port}", tmp_path / "mnt", "--nop-interval", "1",
                        "--replacement-timeout", "60") as mnt, \
                loop_filesystem(mnt / IQN / "lun0", tmp_path / "fs") as fs:
            fio = start_fio_verify(fs.directory, "32M", tmp_path / "fio.json",
                                   ("--loops=12",))

            # a clean cut, a cut in the middle of a PDU, a pause shorter than the NOP
            # timeout, one longer (detected as a dead peer), then latency; repeated
            steps = [proxy.cut, lambda: proxy.cut(mid_pdu=True),
                     lambda: proxy.stall(0.5), lambda: proxy.stall(3),
                     lambda: setattr(proxy, "delay", 0.002),
                     lambda: setattr(proxy, "delay", 0.0)]
            with proxy.repeating(1.5, steps):
                result = fio_result(fio, tmp_path / "fio.json", timeout=300)
            assert result["errors"] == 0
            assert result["verified"] == result["written"] > 0
            assert proxy.cuts >= 2, "the workload ended before the proxy cut anything"
            assert proxy.connections > 2
        assert kernel_errors(fs.device, log_start) == []
    finally:
        stop(target)
