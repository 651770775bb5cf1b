"""The iscsi-test-cu output parser counts like CUnit and tells skipped tests from real passes."""

from __future__ import annotations

from tests.interop.cunit import parse

SAMPLE = """\
Suite: GetLBAStatus
  Test: Simple ...passed
  Test: BeyondEol ...    [FAILED] GET_LBA_STATUS successful but should have failed
FAILED
    1. test_get_lba_status_beyond_eol.c:38  - CU_ASSERT_EQUAL(_r,0)
  Test: UnmapSingle ...    [SKIPPED] Logical unit is fully provisioned. Skipping test
passed
Suite: ProutReserve
  Test: LUNReset ...passed    [FAILED] PRIN command: failed with sense.
Suite: Reserve6
  Test: 2Initiators ...    Take out a RESERVE6 from the first initiator
    [FAILED] MODESENSE6 successful but should have failed
FAILED
  Test: UnmapVPD ...    [FAILED] WRITESAME10 command failed with status 2
passed

Run Summary:    Type  Total    Ran Passed Failed Inactive
              suites      3      3    n/a      0        0
               tests      6      6      4      2        0
"""


def test_counts_and_outcomes() -> None:
    run = parse(SAMPLE)
    assert (run.total, run.ran, run.passed, run.failed) == (6, 6, 4, 2)
    assert run.outcomes == {
        "GetLBAStatus.Simple": "passed",
        "GetLBAStatus.BeyondEol": "failed",
        "GetLBAStatus.UnmapSingle": "skipped",
        "ProutReserve.LUNReset": "passed",
        "Reserve6.2Initiators": "failed",
        "Reserve6.UnmapVPD": "passed",
    }
    assert run.real_passes == 3
    assert run.skipped == ["GetLBAStatus.UnmapSingle"]
    assert run.failures == ["GetLBAStatus.BeyondEol", "Reserve6.2Initiators"]
