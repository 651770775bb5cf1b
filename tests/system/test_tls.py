"""TLS end to end: our TLS portal, pinning, refusals, and stunnel in front of tgtd."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blockbridge.tls import generate_self_signed
from tests.interop.daemons import free_port, our_target, tgtd
from tests.needs import needs

pytestmark = [pytest.mark.system,
              needs("/dev/fuse")]

IQN = "iqn.2026-11.test:tls"


def bb(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XDG_CONFIG_HOME=str(home / "config"))
    return subprocess.run([sys.executable, "-m", "blockbridge", *args], capture_output=True,
                          text=True, timeout=60, env=env)


def test_tls_portal(tmp_path: Path) -> None:
    crt, key, fp = generate_self_signed(tmp_path / "certs")
    args = ["--disk", str(tmp_path / "d.img"), "--size", "16M", "--target-name", IQN,
            "--tls-portal", "127.0.0.1:0", "--tls-cert", str(crt), "--tls-key", str(key)]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with our_target(args, tmp_path) as t:
        plain = bb("discover", t.portal, home=tmp_path)
        assert plain.returncode == 1 and "add --tls" in plain.stderr
        wrong = bb("discover", "--tls", "--tls-fingerprint", "SHA256:" + "ab" * 32, t.portal,
                   home=tmp_path)
        assert wrong.returncode == 1 and "does not match the pinned fingerprint" in wrong.stderr
        unknown = bb("discover", "--tls", t.portal, home=tmp_path)
        assert unknown.returncode == 1 and "is not a known host" in unknown.stderr
        assert fp in unknown.stderr
        first = bb("discover", "--tls", "--tls-accept-new", t.portal, home=tmp_path)
        assert first.returncode == 0 and IQN in first.stdout, first.stderr
        again = bb("discover", "--tls", t.portal, home=tmp_path)  # now a known host
        assert again.returncode == 0 and IQN in again.stdout
        with_ca = bb("discover", "--tls-ca", str(crt), t.portal, home=tmp_path)
        assert with_ca.returncode == 0, with_ca.stderr
        r = bb("mount", "--tls", "--tls-fingerprint", fp, t.portal, str(mnt), home=tmp_path)
        assert r.returncode == 0, r.stderr
        data = os.urandom(1 << 20)
        (mnt / IQN / "lun0").write_bytes(data)
        assert bb("umount", str(mnt), home=tmp_path).returncode == 0
        assert "TLS handshake failed" in t.log()
    assert (tmp_path / "d.img").read_bytes()[: 1 << 20] == data


def test_client_certificates(tmp_path: Path) -> None:
    crt, key, fp = generate_self_signed(tmp_path / "server")
    client_crt, client_key, _ = generate_self_signed(tmp_path / "client", "laptop")
    args = ["--disk", str(tmp_path / "d.img"), "--size", "16M", "--target-name", IQN,
            "--tls-portal", "127.0.0.1:0", "--tls-cert", str(crt), "--tls-key", str(key),
            "--tls-client-ca", str(client_crt)]
    with our_target(args, tmp_path) as t:
        anonymous = bb("discover", "--tls-fingerprint", fp, t.portal, home=tmp_path)
        assert anonymous.returncode == 1
        ok = bb("discover", "--tls-fingerprint", fp, "--tls-client-cert", str(client_crt),
                "--tls-client-key", str(client_key), t.portal, home=tmp_path)
        assert ok.returncode == 0 and IQN in ok.stdout, ok.stderr


@needs("stunnel4", "tgtd", "tgtadm")
def test_stunnel_in_front_of_tgtd(tmp_path: Path) -> None:
    crt, key, fp = generate_self_signed(tmp_path / "certs")
    disk = tmp_path / "tgt.img"
    with disk.open("wb") as f:
        f.truncate(8 << 20)
    target = "iqn.2026-11.test.tgt:behind-stunnel"
    with tgtd({target: [disk]}) as t:
        port = free_port()
        conf = tmp_path / "stunnel.conf"
        conf.write_text(f"foreground = yes\npid =\n[iscsi]\naccept = 127.0.0.1:{port}\n"
                        f"connect = {t.portal}\ncert = {crt}\nkey = {key}\n")
        proc = subprocess.Popen(["stunnel4", str(conf)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            listing = bb("discover", "--luns", "--tls", "--tls-fingerprint", fp,
                         f"127.0.0.1:{port}", home=tmp_path)
            assert listing.returncode == 0, listing.stderr
            assert target in listing.stdout and "lun1: 8388608 bytes" in listing.stdout
            mnt = tmp_path / "mnt"
            mnt.mkdir()
            r = bb("mount", "--tls", "--tls-fingerprint", fp, f"127.0.0.1:{port}", str(mnt),
                   home=tmp_path)
            assert r.returncode == 0, r.stderr
            try:
                payload = os.urandom(1 << 20)
                with (mnt / target / "lun1").open("r+b") as f:
                    f.write(payload)
                    f.flush()
                    os.fsync(f.fileno())
                assert disk.read_bytes()[: 1 << 20] == payload
            finally:
                assert bb("umount", str(mnt), home=tmp_path).returncode == 0
        finally:
            proc.terminate()
            proc.wait(10)
