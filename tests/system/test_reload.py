"""SIGHUP re-reads ietd.conf: new targets and LUNs appear, sessions in use keep working."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.interop.daemons import our_target
from tests.needs import needs

pytestmark = [pytest.mark.system,
              needs("/dev/fuse"),
              needs("iscsi-ls")]

A = "iqn.2026-11.test:reload-a"
B = "iqn.2026-11.test:reload-b"


def bb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blockbridge", *args], capture_output=True,
                          text=True, timeout=60)


def wait_for(predicate: object, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_reload_adds_targets_without_dropping_sessions(tmp_path: Path) -> None:
    disks = {n: tmp_path / f"{n}.img" for n in ("a0", "a1", "b0")}
    for d in disks.values():
        d.write_bytes(bytes(4 << 20))
    conf = tmp_path / "ietd.conf"
    conf.write_text(f"Target {A}\n  Lun 0 Path={disks['a0']}\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with our_target(["-c", str(conf), "--portal", "127.0.0.1:0"], tmp_path) as t:
        assert bb("mount", t.portal, str(mnt)).returncode == 0
        try:
            conf.write_text(f"Target {A}\n  Lun 0 Path={disks['a0']}\n"
                            f"  Lun 1 Path={disks['a1']}\nTarget {B}\n  Lun 0 Path={disks['b0']}\n")
            t.process.send_signal(signal.SIGHUP)
            assert wait_for(lambda: "added target" in t.log())
            listing = subprocess.run(["iscsi-ls", "-s", f"iscsi://{t.portal}"],
                                     capture_output=True, text=True, timeout=30).stdout
            assert B in listing and "Lun:1" in listing
            conf.write_text("Target broken\n")
            t.process.send_signal(signal.SIGHUP)
            assert wait_for(lambda: "reload failed, keeping the running configuration"
                            in t.log())
            payload = os.urandom(1 << 20)
            with (mnt / A / "lun0").open("r+b") as f:  # the session from before still works
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            assert disks["a0"].read_bytes()[: 1 << 20] == payload
            assert "reconnect" not in bb("status", str(mnt)).stdout
        finally:
            bb("umount", str(mnt))
