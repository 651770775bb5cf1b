"""libiscsi's conformance suite, iscsi-test-cu, against our target.

The floor: tgtd passes 222 of the 230 tests on this kind of machine, about 160 of them for
real (CUnit counts a test that prints [SKIPPED] as passed).  Our target must do at least as
well, in one whole run and suite by suite, and stay up throughout.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.interop.cunit import CUnitRun, parse
from tests.interop.daemons import our_target
from tests.needs import needs

pytestmark = [
    pytest.mark.interop,
    needs("iscsi-test-cu"),
]

IQN = "iqn.2026-11.local.blockbridge.test:conformance"
INITIATOR_1 = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test"
INITIATOR_2 = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2"
MIN_CUNIT_PASSES = 222
MIN_REAL_PASSES = 180


def run_suite(portal: str, test: str, timeout: float) -> tuple[CUnitRun, str]:
    url = f"iscsi://{portal}/{IQN}/0"
    proc = subprocess.run(
        ["iscsi-test-cu", "--dataloss", f"--test={test}", "-i", INITIATOR_1, "-I", INITIATOR_2,
         url],
        capture_output=True, text=True, timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    return parse(out), out


def suites() -> list[str]:
    out = subprocess.run(["iscsi-test-cu", "-l"], capture_output=True, text=True).stdout
    return sorted({line.strip().split(".")[1] for line in out.splitlines()
                   if line.strip().startswith("ALL.") and line.count(".") == 1})


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    return tmp_path / "conformance.img"


def test_whole_suite(tmp_path: Path, disk: Path) -> None:
    args = ["--disk", str(disk), "--size", "64M", "--target-name", IQN,
            "--portal", "127.0.0.1:0"]
    with our_target(args, tmp_path) as target:
        run, out = run_suite(target.portal, "ALL", timeout=900)
        assert target.process.poll() is None, "the target died during the suite"
    summary = (f"{run.passed}/{run.total} CUnit passes, {run.real_passes} real; "
               f"failures: {run.failures}")
    print(summary)
    assert run.total == 230, out[-3000:]
    assert run.passed >= MIN_CUNIT_PASSES, summary
    assert run.real_passes >= MIN_REAL_PASSES, summary


def test_suite_by_suite(tmp_path: Path, disk: Path) -> None:
    """Each suite on its own, one after another on the same daemon: nothing leaks between them."""
    args = ["--disk", str(disk), "--size", "64M", "--target-name", IQN,
            "--portal", "127.0.0.1:0"]
    total = CUnitRun()
    with our_target(args, tmp_path) as target:
        for suite in suites():
            run, out = run_suite(target.portal, f"ALL.{suite}", timeout=300)
            assert run.total > 0, f"suite {suite} did not run:\n{out[-2000:]}"
            total.outcomes.update(run.outcomes)
            total.total += run.total
            total.passed += run.passed
            assert target.process.poll() is None, f"the target died during suite {suite}"
    summary = (f"{total.passed}/{total.total} CUnit passes, {total.real_passes} real; "
               f"failures: {total.failures}")
    print(summary)
    assert total.total == 230
    assert total.passed >= MIN_CUNIT_PASSES, summary
    assert total.real_passes >= MIN_REAL_PASSES, summary
