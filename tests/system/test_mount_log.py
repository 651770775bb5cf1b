"""A background mount logs to a file in the user's state directory, shown by status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.interop.daemons import our_target
from tests.needs import needs

pytestmark = [pytest.mark.system,
              needs("/dev/fuse"),
              pytest.mark.usefixtures("fuse_engine")]


def test_background_mount_logs_to_the_state_directory(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}

    def bb(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "blockbridge", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with our_target(["--disk", str(tmp_path / "d.img"), "--size", "8M", "--portal",
                     "127.0.0.1:0", "--target-name", "iqn.2026-11.test:log"], tmp_path) as t:
        r = bb("mount", t.portal, str(mnt))
        assert r.returncode == 0, r.stderr
        try:
            status = bb("status", str(mnt)).stdout
        finally:
            assert bb("umount", str(mnt)).returncode == 0
    name = str(mnt).strip("/").replace("/", "-")
    log = tmp_path / "state" / "blockbridge" / "log" / f"mount-{name}.log"
    assert f"log {log}" in status
    text = log.read_text()
    assert f"mounted 1 LUN(s) of {t.portal} on {mnt}" in text
    assert f"unmounting {mnt}" in text
    assert oct(log.stat().st_mode & 0o777) == "0o600"
