"""SIGUSR1 makes the target daemon log its status: targets, LUNs, sessions, connections."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.interop.daemons import RunningTarget, our_target
from tests.needs import needs

pytestmark = [pytest.mark.system, needs("/dev/fuse")]

NAME = "iqn.2026-12.test:status"


def bb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blockbridge", *args], capture_output=True,
                          text=True, timeout=60)


def status_report(log: str) -> str:
    """The last status report in a daemon's log (and what was logged after it)."""
    return log[log.rindex("status: "):]


def signalled(target: RunningTarget, count: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if target.log().count("status: ") >= count:
            return True
        target.process.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
    return False


def test_sigusr1_logs_targets_luns_and_the_sessions_in_use(tmp_path: Path) -> None:
    disk, spare = tmp_path / "disk.img", tmp_path / "spare.img"
    disk.write_bytes(bytes(4 << 20))
    spare.write_bytes(bytes(1 << 20))
    conf = tmp_path / "ietd.conf"
    conf.write_text(f"Target {NAME}\n  Alias shelf\n  Lun 0 Path={disk}\n"
                    f"  Lun 1 Path={spare},IOMode=ro\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with our_target(["-c", str(conf), "--portal", "127.0.0.1:0"], tmp_path) as t:
        t.process.send_signal(signal.SIGUSR1)
        assert signalled(t, 1)
        idle = status_report(t.log())
        assert f"status: serving 1 target(s), 2 LUN(s) on {t.portal}; 0 session(s)" in idle
        assert f"target {NAME} (shelf)" in idle
        assert f"LUN 0: file {disk}, 4194304 bytes" in idle
        assert "LUN 1" in idle and "read-only" in idle
        assert bb("mount", t.portal, str(mnt)).returncode == 0
        try:
            assert signalled(t, 2)
            busy = status_report(t.log())
            assert "1 session(s), 1 connection(s) (0 logging in)" in busy
            assert re.search(r"  session \d+: iqn\.[^,]+, ISID [0-9a-f]{12}\n", busy)
            assert "connection 127.0.0.1:" in busy and f"-> {t.portal}" in busy
            assert "command(s) in flight" in busy
            assert t.process.poll() is None  # the signal did not stop the daemon
        finally:
            assert bb("umount", str(mnt)).returncode == 0
