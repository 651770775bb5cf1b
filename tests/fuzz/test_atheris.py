"""Short coverage-guided fuzz runs of the sans-IO core (longer ones: see atheris_targets)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                                reason="atheris is not installed")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("target", ["pdu", "text", "login"])
def test_fuzz_target_finds_nothing(target: str, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "tests.fuzz.atheris_targets", target,
                        "-runs=50000", "-seed=1", f"-artifact_prefix={tmp_path}/"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Done 50000 runs" in r.stderr
    assert not list(tmp_path.glob("crash-*"))
