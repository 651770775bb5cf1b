"""bench/run.py --compare refuses result files of different machines; the CPU meter of the
CPU-per-request rows counts what a process spends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.measure import CpuMeter

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


def test_cpu_meter_divides_the_cpu_time_of_a_run_by_its_requests() -> None:
    def busy() -> tuple[float, int]:  # 0.2 s of CPU in this process, "40 requests"
        end = time.process_time() + 0.2
        while time.process_time() < end:
            pass
        return 42.0, 40

    meter = CpuMeter(os.getpid())
    assert meter.watch(busy)() == 42.0
    (per_request,) = meter.samples
    assert 0.15 / 40 * 1e6 <= per_request <= 1.0 / 40 * 1e6  # µs; clock ticks are 10 ms
