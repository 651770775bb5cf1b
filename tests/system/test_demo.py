"""The README's first command: scripts/demo mounts a demo LUN and says what to try next."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.interop.daemons import free_port
from tests.needs import needs

pytestmark = [pytest.mark.system,
              needs("/dev/fuse")]

ROOT = Path(__file__).resolve().parents[2]


def test_demo_mounts_a_lun_and_stops_cleanly(tmp_path: Path) -> None:
    env = {**os.environ, "DEMO_DIR": str(tmp_path / "demo"), "DEMO_PORT": str(free_port()),
           "DEMO_SIZE": "64M", "XDG_STATE_HOME": str(tmp_path / "state")}
    try:
        r = subprocess.run([str(ROOT / "scripts" / "demo")], capture_output=True, text=True,
                           env=env, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        lun = tmp_path / "demo" / "mnt" / "iqn.2026-11.local.blockbridge:demo" / "lun0"
        assert lun.stat().st_size == 64 << 20
        assert "Things to try" in r.stdout and "scripts/demo stop" in r.stdout
        with lun.open("r+b") as f:
            f.write(b"hello demo")
            f.flush()
            os.fsync(f.fileno())
    finally:
        stop = subprocess.run([str(ROOT / "scripts" / "demo"), "stop"], capture_output=True,
                              text=True, env=env, timeout=120)
    assert stop.returncode == 0 and "demo stopped" in stop.stdout
    assert not (tmp_path / "demo" / "mnt").is_mount()
    assert (tmp_path / "demo" / "demo.img").read_bytes()[:10] == b"hello demo"


def test_demo_fails_loudly_when_the_mount_fails(tmp_path: Path) -> None:
    # A live process in the pid file passes for a running target, but nothing listens on the
    # port: the mount cannot connect, and the demo says so instead of carrying on.
    demo = tmp_path / "demo"
    demo.mkdir()
    env = {**os.environ, "DEMO_DIR": str(demo), "DEMO_PORT": str(free_port()),
           "XDG_STATE_HOME": str(tmp_path / "state")}
    stand_in = subprocess.Popen(["sleep", "600"])
    try:
        (demo / "target.pid").write_text(f"{stand_in.pid}\n")
        r = subprocess.run([str(ROOT / "scripts" / "demo")], capture_output=True, text=True,
                           env=env, timeout=600)
    finally:
        stand_in.kill()
        stand_in.wait()
    assert r.returncode != 0
    assert "cannot connect" in r.stderr and "blockbridge mount failed" in r.stderr
    assert "Things to try" not in r.stdout
    assert not (demo / "mnt").is_mount()
