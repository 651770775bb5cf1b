"""bench/run.py for real: quick runs of the scaling and qsd sections with tiny sizes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.needs import needs, require_in_ci

pytestmark = [
    pytest.mark.system,
    needs("/dev/fuse"),
]

RUN = Path(__file__).resolve().parents[2] / "bench" / "run.py"
ROWS = ("mount + read 16 MiB", "peak RSS: blockbridge-target", "peak RSS: blockbridge mount")
NUMBER = r"\d+(?:\.\d+)?"


def test_quick_scaling_section_prints_rows_and_writes_a_fingerprint(tmp_path: Path) -> None:
    result = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--only", "scaling", "--size", "16M",
         "--workdir", str(tmp_path), "--json", str(result)],
        capture_output=True, text=True, timeout=600)
    if "skipped:" in done.stdout:
        require_in_ci(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ROWS:
        pattern = rf"^\s+{re.escape(name)}.*\s(?:s|MiB)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\b"
        assert re.search(pattern, done.stdout, re.MULTILINE), (name, done.stdout)
    doc = json.loads(result.read_text())
    assert {"hostname", "cpu_model", "nproc", "kernel", "memory_kib", "python"} <= set(
        doc["fingerprint"])
    section = doc["sections"]["scaling"]
    assert section["status"] == "ok" and len(section["rows"]) == len(ROWS)
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # the work dir is gone


QSD_ROWS = ("dd read bs=1M, buffered", "dd read bs=1M, iflag=direct",
            "dd write bs=1M, buffered, fsync", "dd write bs=1M, oflag=direct, fsync",
            "fio randread 4 KiB, qd 1", "fio randread 4 KiB, qd 32",
            "fio randwrite 4 KiB, qd 1", "fio randwrite 4 KiB, qd 32",
            "CPU per request: dd read bs=1M, iflag=direct",
            "CPU per request: dd write bs=1M, oflag=direct, fsync",
            "CPU per request: fio randread 4 KiB, qd 32",
            "CPU per request: fio randwrite 4 KiB, qd 32",
            "peak RSS: blockbridge mount | qemu-storage-daemon")


@needs("qemu-storage-daemon", "qemu-iscsi", "tgtd", "fio", "/dev/fuse", "root")
def test_quick_qsd_section_compares_with_qemu_storage_daemon_on_one_tgtd_lun(
        tmp_path: Path) -> None:
    result = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--only", "qsd", "--size", "16M",
         "--workdir", str(tmp_path), "--json", str(result)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[qsd]" in done.stdout and "skipped:" not in done.stdout, done.stdout
    for name in QSD_ROWS:  # both sides have a figure, and the ratio is printed (a CPU time
        # of a 1 s run can be under one clock tick: 0, and no ratio)
        ratio = rf"(?:{NUMBER}|-)" if name.startswith("CPU") else NUMBER
        unit = r"(?:MiB/s|IOPS|µs|MiB)"
        pattern = rf"^\s+{re.escape(name)}\s+{unit}\s+{NUMBER}\s+{NUMBER}\s+{ratio}(?:\s|$)"
        assert re.search(pattern, done.stdout, re.MULTILINE), (name, done.stdout)
    rows = json.loads(result.read_text())["sections"]["qsd"]["rows"]
    assert [r["test"] for r in rows] == list(QSD_ROWS)
    assert all(r["ours_median"] > 0 and r["reference_median"] for r in rows
               if not r["test"].startswith("CPU")), rows
    goals = {r["test"]: r["goal"] for r in rows}
    assert all(goals[name] == 1.0 for name in QSD_ROWS[:8]), goals
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # the work dir is gone
