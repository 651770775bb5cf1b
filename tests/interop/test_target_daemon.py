"""Our target as a real process, checked with tools no one here wrote (libiscsi, qemu-img)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from blockbridge.iscsi import pdu as P
from blockbridge.iscsi.constants import Stage
from blockbridge.iscsi.text import encode_text
from tests.interop.daemons import our_target
from tests.needs import needs

pytestmark = [pytest.mark.interop,
              needs("iscsi-ls", "iscsi-inq")]

IQN = "iqn.2026-11.local.blockbridge.test:daemon"


def run(*cmd: str, timeout: float = 30, secret: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    """Run a program; ``secret``: libiscsi's CHAP secret, in its environment (never in the
    URL, where ps shows it: docs/security.md)."""
    env = None if secret is None else dict(os.environ, LIBISCSI_CHAP_PASSWORD=secret)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def quick(disk: Path, *extra: str) -> list[str]:
    return ["--disk", str(disk), "--size", "32M", "--target-name", IQN,
            "--portal", "127.0.0.1:0", *extra]


def test_libiscsi_tools_see_the_lun(tmp_path: Path) -> None:
    with our_target(quick(tmp_path / "d.img"), tmp_path) as t:
        ls = run("iscsi-ls", "-s", f"iscsi://{t.portal}")
        assert f"Target:{IQN} Portal:{t.portal},1" in ls.stdout, ls.stdout + ls.stderr
        assert "Lun:0    Type:DIRECT_ACCESS (Size:31M)" in ls.stdout
        inq = run("iscsi-inq", f"iscsi://{t.portal}/{IQN}/0")
        assert "Peripheral Device Type:DIRECT_ACCESS" in inq.stdout
        assert "Product:blockbridge disk" in inq.stdout
        cap = run("iscsi-readcapacity16", f"iscsi://{t.portal}/{IQN}/0")
        assert "Total size:33554432" in cap.stdout
        assert "LBPME:1" in cap.stdout


@needs("qemu-img", "qemu-iscsi")
def test_qemu_img_reads_and_writes(tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    src.write_bytes(b"blockbridge!" * 100000)
    with our_target(quick(tmp_path / "d.img"), tmp_path) as t:
        url = f"iscsi://{t.portal}/{IQN}/0"
        info = run("qemu-img", "info", url)
        assert "virtual size: 32 MiB" in info.stdout, info.stdout + info.stderr
        conv = run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), url,
                   timeout=60)
        assert conv.returncode == 0, conv.stderr
    data = (tmp_path / "d.img").read_bytes()
    assert data[: src.stat().st_size] == src.read_bytes()


def test_config_file_with_chap_and_acl(tmp_path: Path) -> None:
    disk = tmp_path / "lun.img"
    disk.write_bytes(b"\0" * (8 << 20))
    conf = tmp_path / "ietd.conf"
    conf.write_text(f"Target {IQN}\n  Lun 0 Path={disk},Type=fileio,IOMode=wb\n"
                    "  IncomingUser alice alice-secret-123\n")
    allow = tmp_path / "initiators.allow"
    allow.write_text(f"{IQN} iqn\\.2026-11\\.test:good.*\nALL ALL\n")
    args = ["-c", str(conf), "--initiators-allow", str(allow), "--portal", "127.0.0.1:0"]
    with our_target(args, tmp_path) as t:
        good = f"iscsi://alice@{t.portal}/{IQN}/0"
        ok = run("iscsi-inq", "-i", "iqn.2026-11.test:good-host", good,
                 secret="alice-secret-123")
        assert "DIRECT_ACCESS" in ok.stdout, ok.stdout + ok.stderr
        bad_secret = run("iscsi-inq", "-i", "iqn.2026-11.test:good-host", good,
                         secret="wrong-secret-000")
        assert bad_secret.returncode != 0 and "DIRECT_ACCESS" not in bad_secret.stdout
        not_allowed = run("iscsi-inq", "-i", "iqn.2026-11.test:intruder", good,
                          secret="alice-secret-123")
        assert not_allowed.returncode != 0 and "DIRECT_ACCESS" not in not_allowed.stdout
        hidden = run("iscsi-ls", "-i", "iqn.2026-11.test:intruder", f"iscsi://{t.portal}")
        assert IQN not in hidden.stdout
        log = t.log()
    assert "alice-secret-123" not in log
    assert "authentication" in log.lower()


def test_weak_secrets_warn_or_refuse(tmp_path: Path) -> None:
    disk = tmp_path / "w.img"
    disk.write_bytes(bytes(1 << 20))
    conf = tmp_path / "ietd.conf"
    conf.write_text(f"Target {IQN}\n  Lun 0 Path={disk}\n  IncomingUser bob short\n")
    r = target_cli("-c", str(conf), "--refuse-weak-secrets", cwd=tmp_path)
    assert r.returncode == 2
    assert f"{conf}:3: the CHAP secret of bob is shorter than 12 characters" in r.stderr
    with our_target(["-c", str(conf), "--portal", "127.0.0.1:0"], tmp_path) as t:
        assert "shorter than 12 characters" in t.log()


def test_a_secret_in_both_directions_is_refused_at_start_and_reload(tmp_path: Path) -> None:
    import signal
    import time

    disk = tmp_path / "s.img"
    disk.write_bytes(bytes(1 << 20))
    conf = tmp_path / "ietd.conf"
    good = (f"Target {IQN}\n  Lun 0 Path={disk}\n  IncomingUser bob bob-secret-45678\n"
            "  OutgoingUser one one-secret-4567\n"
            f"Target {IQN}2\n  Lun 0 Path={disk}\n  IncomingUser carol carol-secret-456\n")
    bad = good.replace("carol-secret-456", "one-secret-4567")
    conf.write_text(bad)
    r = target_cli("-c", str(conf), "--portal", "127.0.0.1:0", cwd=tmp_path)
    assert r.returncode == 2
    assert f"{conf}:7: the secret of OutgoingUser one (line 4) is also the secret of " \
           "IncomingUser carol (line 7)" in r.stderr
    conf.write_text(good)
    with our_target(["-c", str(conf), "--portal", "127.0.0.1:0"], tmp_path) as t:
        conf.write_text(bad)
        t.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload failed" not in t.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "reload failed, keeping the running configuration: " \
               f"{conf}:7: the secret of OutgoingUser one" in t.log()


def target_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blockbridge_target", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=30)


def test_startup_errors_are_one_clear_line(tmp_path: Path) -> None:
    conf = tmp_path / "ietd.conf"
    conf.write_text("Target iqn.2026-11.x:y\n  Lun 0 Path=/nonexistent/disk.img\n")
    r = target_cli("-c", str(conf), "--portal", "127.0.0.1:0", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        f"blockbridge-target: {conf}:2: Lun 0: backing file /nonexistent/disk.img does not exist")
    conf.write_text("Target iqn.2026-11.x:y\n  Lun 0 Type=fileio\n")
    r = target_cli("-c", str(conf), cwd=tmp_path)
    assert r.returncode == 2 and f"{conf}:2: Lun 0 has no Path" in r.stderr
    assert "Traceback" not in r.stderr
    r = target_cli("--disk", str(tmp_path / "missing.img"), cwd=tmp_path)
    assert r.returncode == 2 and "give --size to create it" in r.stderr


def test_port_in_use(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        r = target_cli("--disk", str(tmp_path / "d.img"), "--size", "1M",
                       "--portal", f"127.0.0.1:{port}", cwd=tmp_path)
    finally:
        holder.close()
    assert r.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in r.stderr
    assert "Traceback" not in r.stderr


def _login_pdu() -> bytes:
    text = encode_text([("InitiatorName", "iqn.2026-11.test:raw"), ("TargetName", IQN),
                        ("SessionType", "Normal"), ("AuthMethod", "None")])
    req = P.LoginRequest(transit=True, csg=Stage.SECURITY, nsg=Stage.OPERATIONAL,
                         isid=bytes.fromhex("800000000001"), data=text)
    return P.encode_pdu(req)


def test_bad_clients_are_dropped_and_others_unaffected(tmp_path: Path) -> None:
    with our_target(quick(tmp_path / "d.img"), tmp_path) as t:
        garbage = [b"\xff" * 48, b"GET / HTTP/1.0\r\n\r\n" * 4,
                   P.encode_pdu(P.SCSICommand(cdb=bytes(16))),  # command before login
                   _login_pdu()[:30]]
        for blob in garbage:
            with socket.create_connection(("127.0.0.1", t.port), timeout=5) as s:
                s.sendall(blob)
                s.shutdown(socket.SHUT_WR)
                s.settimeout(5)
                try:
                    while s.recv(4096):
                        pass
                except OSError:
                    pass
        # An oversized data segment is refused before it is read.
        with socket.create_connection(("127.0.0.1", t.port), timeout=5) as s:
            bhs = bytearray(P.encode_pdu(P.LoginRequest(isid=bytes(6)))[:48])
            bhs[5:8] = b"\xff\xff\xff"
            s.sendall(bytes(bhs))
            s.settimeout(5)
            assert s.recv(4096) == b""
        inq = run("iscsi-inq", f"iscsi://{t.portal}/{IQN}/0")
        assert "DIRECT_ACCESS" in inq.stdout
        assert t.process.poll() is None
        assert "Traceback" not in t.log()


@needs("qemu-img", "qemu-iscsi")
def test_sigterm_flushes_and_exits_cleanly(tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    with our_target(quick(disk), tmp_path) as t:
        url = f"iscsi://{t.portal}/{IQN}/0"
        src = tmp_path / "src.raw"
        src.write_bytes(b"x" * (1 << 20))
        assert run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src),
                   url).returncode == 0
        proc = t.process
    assert proc.returncode == 0
    assert "shutting down" in t.log()
    assert disk.read_bytes()[: 1 << 20] == b"x" * (1 << 20)


def test_send_targets_of_300_targets_reaches_iscsi_ls_whole(tmp_path: Path) -> None:
    """A SendTargets answer far longer than 8 KiB (about 28 KiB): every target is listed,
    none cut off (libiscsi lists them in its own order)."""
    names = [f"iqn.2026-12.local.blockbridge.test:many-targets-{i:03d}" for i in range(300)]
    lines = []
    for i, name in enumerate(names):
        disk = tmp_path / f"lun{i}.img"
        with disk.open("wb") as f:
            f.truncate(1 << 20)
        lines.append(f"Target {name}\n  Lun 0 Path={disk},Type=fileio\n")
    conf = tmp_path / "ietd.conf"
    conf.write_text("".join(lines))
    with our_target(["-c", str(conf), "--portal", "127.0.0.1:0"], tmp_path, timeout=60) as t:
        ls = run("iscsi-ls", f"iscsi://{t.portal}", timeout=60)
        listed = [line.split()[0].removeprefix("Target:") for line in ls.stdout.splitlines()
                  if line.startswith("Target:")]
        assert sorted(listed) == names, (len(listed), ls.stdout[-500:], ls.stderr[-500:])
        assert "truncated" not in t.log()
