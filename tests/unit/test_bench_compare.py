"""bench/run.py --compare refuses result files of different machines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parents[2] / "bench" / "run.py"


def result(path: Path, hostname: str) -> Path:
    fingerprint = {"hostname": hostname, "cpu_model": "Example CPU", "nproc": 2,
                   "kernel": "6.1.0", "memory_kib": 1 << 20, "python": "3.11.7"}
    path.write_text(json.dumps({"fingerprint": fingerprint, "sections": {}}))
    return path


def compare(a: Path, b: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RUN), "--compare", str(a), str(b)],
                          capture_output=True, text=True, timeout=60)


def test_compare_refuses_results_of_different_machines(tmp_path: Path) -> None:
    done = compare(result(tmp_path / "a.json", "alpha"), result(tmp_path / "b.json", "beta"))
    assert done.returncode == 2
    assert "different machines" in done.stderr and "hostname" in done.stderr


def test_compare_accepts_results_of_the_same_machine(tmp_path: Path) -> None:
    done = compare(result(tmp_path / "a.json", "alpha"), result(tmp_path / "b.json", "alpha"))
    assert done.returncode == 0, done.stderr
