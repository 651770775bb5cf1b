"""A LUN keeps its serial and device identification across restarts and reloads of the
real daemon, as libiscsi's iscsi-inq reads them (VPD pages 0x80 and 0x83)."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.interop.daemons import our_target
from tests.needs import needs

pytestmark = [pytest.mark.interop, needs("iscsi-inq")]

A = "iqn.2026-11.local.blockbridge.test:identity-a"
B = "iqn.2026-11.local.blockbridge.test:identity-b"
Pages = dict[tuple[str, int], tuple[bytes, bytes]]


def inq(portal: str, target: str, lun: int, page: int) -> bytes:
    """iscsi-inq's report of one VPD page; bytes, as it prints binary designators raw."""
    r = subprocess.run(["iscsi-inq", "--evpd=1", f"--pagecode={page}",
                        f"iscsi://{portal}/{target}/{lun}"], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def read_pages(portal: str, luns: list[tuple[str, int]]) -> Pages:
    return {(t, n): (inq(portal, t, n, 0x80), inq(portal, t, n, 0x83)) for t, n in luns}


def serial(page_80: bytes) -> str:
    m = re.search(rb"Unit Serial Number:\[([ -~]*)\]", page_80)
    assert m, page_80
    return m[1].decode()


def check_0x83(page_83: bytes, target: str) -> None:
    naa = page_83.split(b"Designator Type:(3) NAA\nDesignator:[", 1)
    assert len(naa) == 2, page_83
    assert naa[1][0] >> 4 == 3, "the NAA designator is not locally assigned (3h)"
    assert re.search(rb"Designator Type:\(1\) T10_VENDORT_ID\nDesignator:\[BLKBRDG [!-~]+\]",
                     page_83), page_83
    assert f"Designator:[{target},t,0x0001]".encode() in page_83
    assert f"Designator:[{target}]".encode() in page_83


def config(tmp_path: Path, *, a1: bool = True, b: bool = True) -> str:
    disks = {n: tmp_path / f"{n}.img" for n in ("a0", "a1")}
    for d in disks.values():
        if not d.exists():
            d.write_bytes(bytes(1 << 20))
    text = f"Target {A}\n  Lun 0 Path={disks['a0']}\n"
    if a1:
        text += f"  Lun 1 Path={disks['a1']},ScsiId=disk-a1,ScsiSN=PINNED-A1\n"
    if b:
        text += f"Target {B}\n  Lun 0 Type=nullio,Blocks=2048\n"
    return text


def wait_for(predicate: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_pages_0x80_and_0x83_survive_a_restart(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "ietd.conf"
    conf.write_text(config(tmp_path))
    luns = [(A, 0), (A, 1), (B, 0)]
    runs: list[Pages] = []
    for seed in ("1", "2"):  # a different hash salt in each process
        monkeypatch.setenv("PYTHONHASHSEED", seed)
        with our_target(["-c", str(conf), "--portal", "127.0.0.1:0"], tmp_path) as t:
            runs.append(read_pages(t.portal, luns))
    assert runs[0] == runs[1]
    first = runs[0]
    serials = {key: serial(p80) for key, (p80, _) in first.items()}
    assert serials[A, 1] == "PINNED-A1"
    assert len(set(serials.values())) == len(luns)
    assert len({p83 for _, p83 in first.values()}) == len(luns)
    for (target, _), (_, p83) in first.items():
        check_0x83(p83, target)


def test_pages_0x80_and_0x83_survive_reloads(tmp_path: Path) -> None:
    conf = tmp_path / "ietd.conf"
    conf.write_text(config(tmp_path, b=False))
    with our_target(["-c", str(conf), "--portal", "127.0.0.1:0"], tmp_path) as t:
        before = read_pages(t.portal, [(A, 0), (A, 1)])
        # LUN 1 goes, target B comes; LUN 0 is kept as it is
        conf.write_text(config(tmp_path, a1=False))
        t.process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: t.log().count("reloaded ") == 1), t.log()
        assert f"removed LUN 1 of {A}" in t.log()
        middle = read_pages(t.portal, [(A, 0), (B, 0)])
        # LUN 1 comes back: a new unit, with the identity it had
        conf.write_text(config(tmp_path))
        t.process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: t.log().count("reloaded ") == 2), t.log()
        assert f"added LUN 1 to {A}" in t.log()
        after = read_pages(t.portal, [(A, 0), (A, 1), (B, 0)])
    assert middle[A, 0] == before[A, 0] == after[A, 0]
    assert after[A, 1] == before[A, 1]
    assert after[B, 0] == middle[B, 0] != after[A, 0]
