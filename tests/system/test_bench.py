"""bench/run.py for real: a quick run of the scaling section with tiny sizes."""

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
