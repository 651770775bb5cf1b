"""The systemd units verify cleanly, and the target reports READY only once it listens."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.needs import needs

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "systemd").glob("*.service"))


@needs("systemd-analyze")
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_units_verify(unit: Path, tmp_path: Path) -> None:
    bindir = str(Path(sys.executable).parent)
    text = unit.read_text().replace("/usr/local/bin", bindir).replace("%h/.local/bin", bindir)
    name = unit.name.replace("@.", "@demo.")
    (tmp_path / name).write_text(text)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    user = ["--user"] if "user" in unit.name else []
    r = subprocess.run(["systemd-analyze", *user, "verify", f"./{name}"], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_ready_is_sent_after_listening(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(20)
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "blockbridge_target", "--disk", str(tmp_path / "d.img"),
         "--size", "8M", "--portal", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp_path)
    try:
        message = sock.recv(4096).decode()
        assert "READY=1" in message and "STATUS=serving 1 target(s), 1 LUN(s)" in message
        # READY came after the portal listens: it accepts connections now.
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(line.rsplit(":", 1)[1])
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in sock.recv(4096).decode()
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()


@needs("systemd-sysusers")
def test_the_target_users_sysusers_file_is_valid() -> None:
    conf = ROOT / "systemd" / "blockbridge.sysusers.conf"
    r = subprocess.run(["systemd-sysusers", "--dry-run", str(conf)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "blockbridge-target" in r.stdout + r.stderr
    unit = (ROOT / "systemd" / "blockbridge-target.service").read_text()
    assert "User=blockbridge-target" in unit
