"""CHAP from a private credentials file: right, wrong, and a target with the wrong mutual key."""

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

IQN = "iqn.2026-11.test:chap"
SECRET = "alice-secret-123"
TARGET_SECRET = "target-secret-456"


def bb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blockbridge", "-vv", *args],
                          capture_output=True, text=True, timeout=60)


def creds(path: Path, secret: str, target_secret: str | None = None, mode: int = 0o600) -> Path:
    text = f'[default]\nuser = "alice"\nsecret = "{secret}"\n'
    if target_secret:
        text += f'target_user = "filer"\ntarget_secret = "{target_secret}"\n'
    path.write_text(text)
    path.chmod(mode)
    return path


def config(tmp_path: Path, outgoing: str) -> list[str]:
    disk = tmp_path / "lun.img"
    disk.write_bytes(bytes(4 << 20))
    conf = tmp_path / "ietd.conf"
    conf.write_text(f"Target {IQN}\n  Lun 0 Path={disk}\n  IncomingUser alice {SECRET}\n"
                    f"  OutgoingUser filer {outgoing}\n")
    return ["-c", str(conf), "--portal", "127.0.0.1:0", "-vv"]


def test_chap_credentials_file(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with our_target(config(tmp_path, TARGET_SECRET), tmp_path) as t:
        loose = creds(tmp_path / "loose.toml", SECRET, mode=0o644)
        r = bb("mount", t.portal, str(mnt), "--auth-file", str(loose))
        assert r.returncode == 1 and "readable by other users" in r.stderr

        wrong = creds(tmp_path / "wrong.toml", "not-the-secret-0")
        r = bb("mount", t.portal, str(mnt), "--auth-file", str(wrong))
        assert r.returncode == 1
        assert "authentication failed" in r.stderr
        assert r.stderr.strip().count("\n") == 0 or "Traceback" not in r.stderr
        assert not os.path.ismount(mnt)

        impostor = creds(tmp_path / "mutual.toml", SECRET, "what-we-expect-99")
        r = bb("mount", t.portal, str(mnt), "--auth-file", str(impostor))
        assert r.returncode == 1 and "mutual" in r.stderr
        assert not os.path.ismount(mnt)

        good = creds(tmp_path / "good.toml", SECRET, TARGET_SECRET)
        r = bb("mount", t.portal, str(mnt), "--auth-file", str(good), "--log-file",
               str(tmp_path / "mount.log"))
        assert r.returncode == 0, r.stderr
        assert (mnt / IQN / "lun0").stat().st_size == 4 << 20
        env = dict(os.environ, BB_CREDS=(tmp_path / "good.toml").read_text())
        listing = subprocess.run([sys.executable, "-m", "blockbridge", "discover", "--luns",
                                  t.portal, "--auth-env", "BB_CREDS"], env=env,
                                 capture_output=True, text=True, timeout=60)
        assert "lun0: 4194304 bytes" in listing.stdout, listing.stderr
        assert bb("umount", str(mnt)).returncode == 0
        target_log = t.log()
    logs = target_log + (tmp_path / "mount.log").read_text()
    assert SECRET not in logs and TARGET_SECRET not in logs
