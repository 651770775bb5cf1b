"""Live LUN changes on a running target: SIGHUP re-reads sizes and LUN sets; libiscsi's
tools see them, and a session that stays logged in is told with unit attentions."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import trio

from blockbridge.initiator.session import Session
from blockbridge.scsi.constants import SenseKey, Status
from blockbridge.scsi.sense import parse_sense
from tests.interop.daemons import RunningTarget, our_target
from tests.needs import needs

pytestmark = [pytest.mark.interop, needs("iscsi-ls", "iscsi-readcapacity16")]

IQN = "iqn.2026-11.local.blockbridge.test:live"
TUR = bytes(6)


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def reload(t: RunningTarget, conf: Path, text: str) -> None:
    count = t.log().count("reloaded ")
    conf.write_text(text)
    t.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while t.log().count("reloaded ") == count:
        assert time.monotonic() < deadline, t.log()
        time.sleep(0.05)


async def attention(s: Session, lun: int) -> tuple[int, int, int] | None:
    """The unit attention a TEST UNIT READY reports, if any."""
    r = await s.command(lun, TUR)
    sense = parse_sense(r.sense) if r.status == Status.CHECK_CONDITION else None
    return (sense.key, sense.asc, sense.ascq) if sense is not None else None


def test_reload_changes_sizes_and_luns_under_running_sessions(tmp_path: Path) -> None:
    d0, d1 = tmp_path / "d0.img", tmp_path / "d1.img"
    for d in (d0, d1):
        d.write_bytes(bytes(32 << 20))
    conf = tmp_path / "ietd.conf"
    one = f"Target {IQN}\n  Lun 0 Path={d0}\n"
    two = one + f"  Lun 1 Path={d1}\n"
    conf.write_text(one)
    with our_target(["-c", str(conf), "--portal", "127.0.0.1:0"], tmp_path) as t:
        url = f"iscsi://{t.portal}/{IQN}"

        async def main() -> None:
            s = await Session.connect(t.host, t.port, initiator_name="iqn.2026-11.test:held",
                                      target_name=IQN)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(s.run)
                assert await attention(s, 0) is None
                # the file grows by 64 MiB: the size is re-read, the session is told
                os.truncate(d0, (32 + 64) << 20)
                await trio.to_thread.run_sync(reload, t, conf, one)
                assert f"LUN 0 of {IQN} is now {96 << 20} bytes" in t.log()
                cap = await trio.to_thread.run_sync(run, "iscsi-readcapacity16", f"{url}/0")
                assert f"Total size:{96 << 20}" in cap.stdout, cap.stdout + cap.stderr
                assert await attention(s, 0) == (SenseKey.UNIT_ATTENTION, 0x2A, 0x09)
                assert await attention(s, 0) is None
                # a LUN is added: the session is told and can use it at once
                await trio.to_thread.run_sync(reload, t, conf, two)
                ls = await trio.to_thread.run_sync(run, "iscsi-ls", "-s", f"iscsi://{t.portal}")
                assert "Lun:1" in ls.stdout, ls.stdout
                assert await attention(s, 0) == (SenseKey.UNIT_ATTENTION, 0x3F, 0x0E)
                assert await attention(s, 1) is None
                # and removed again: it answers LOGICAL UNIT NOT SUPPORTED
                await trio.to_thread.run_sync(reload, t, conf, one)
                assert await attention(s, 0) == (SenseKey.UNIT_ATTENTION, 0x3F, 0x0E)
                assert await attention(s, 1) == (SenseKey.ILLEGAL_REQUEST, 0x25, 0x00)
                cap = await trio.to_thread.run_sync(run, "iscsi-readcapacity16", f"{url}/1")
                assert cap.returncode != 0
                await s.logout()
                nursery.cancel_scope.cancel()

        trio.run(main)
