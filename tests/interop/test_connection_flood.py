"""Our target as a process under a flood of idle, unauthenticated connections: others
still log in at once, and the log stays short (docs/security.md)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from blockbridge.iscsi import pdu as P
from blockbridge.iscsi.framing import PDUReader
from blockbridge.iscsi.initiator_login import InitiatorLogin
from tests.interop.daemons import our_target
from tests.needs import needs

pytestmark = [pytest.mark.interop]

IQN = "iqn.2026-11.local.blockbridge.test:flood"


def login_from(source: str, port: int, timeout: float = 5.0) -> float:
    """A normal-session login from ``source``; how long it took."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                  source_address=(source, 0)) as s:
        login = InitiatorLogin(initiator_name="iqn.2026-11.test:legit", target_name=IQN,
                               isid=bytes.fromhex("800000000042"), random_bytes=os.urandom)
        reader = PDUReader()
        req: P.LoginRequest | None = login.start(cmdsn=1)
        while req is not None:
            s.sendall(P.encode_pdu(req))
            while (rsp := reader.next_pdu()) is None:
                chunk = s.recv(65536)
                assert chunk, "the target closed the connection"
                reader.feed(chunk)
            assert isinstance(rsp, P.LoginResponse)
            req = login.receive(rsp)
        assert login.done
    return time.monotonic() - start


def flood(port: int, count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    out = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        out.append(s)
    return out


def lines_about(log: str, what: str) -> list[str]:
    return [line for line in log.splitlines() if what in line and "listening on" not in line]


def test_2000_idle_connections_do_not_keep_others_out(tmp_path: Path) -> None:
    args = ["--disk", str(tmp_path / "d.img"), "--size", "8M", "--target-name", IQN,
            "--portal", "127.0.0.1:0"]
    with our_target(args, tmp_path, nofile=4096) as t:
        idle = flood(t.port, 2000)
        try:
            took = login_from("127.0.0.2", t.port)
            assert took < 2.0, took
            time.sleep(0.2)
            about = lines_about(t.log(), "127.0.0.1:")
            assert 1 <= len(about) <= 5, "\n".join(about[:20])
            assert "--max-logins-per-address 8" in about[0]
        finally:
            for s in idle:
                s.close()
        print(f"login from 127.0.0.2 under 2000 idle connections: {took * 1000:.0f} ms; "
              f"{len(about)} log line(s) about the flood")
        assert t.process.poll() is None


@needs("iscsi-inq")
def test_out_of_descriptors_pauses_accepting_with_one_line(tmp_path: Path) -> None:
    import subprocess

    args = ["--disk", str(tmp_path / "d.img"), "--size", "8M", "--target-name", IQN,
            "--portal", "127.0.0.1:0", "--max-logins", "1000",
            "--max-logins-per-address", "1000"]
    with our_target(args, tmp_path, nofile=64) as t:
        idle = flood(t.port, 150)  # accepted or queued: far more than 64 descriptors
        try:
            time.sleep(1.5)
            assert t.process.poll() is None
        finally:
            for s in idle:
                s.close()
        time.sleep(1.0)  # the target sees them close and accepts again
        inq = subprocess.run(["iscsi-inq", f"iscsi://{t.portal}/{IQN}/0"],
                             capture_output=True, text=True, timeout=30)
        assert "DIRECT_ACCESS" in inq.stdout, inq.stdout + inq.stderr
        log = t.log()
        paused = lines_about(log, "accepting connections paused")
        assert 1 <= len(paused) <= 2, log[-3000:]
        assert "Too many open files" in paused[0] and "LimitNOFILE" in paused[0]
        assert "the limit on open files is 64" in log
