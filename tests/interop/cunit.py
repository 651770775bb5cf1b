"""Parse the console output of libiscsi's iscsi-test-cu (CUnit basic mode)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TEST = re.compile(r"^\s*Test: (?P<name>\S+) \.\.\.")
_SUITE = re.compile(r"^Suite: (?P<name>\S+)")
_SUMMARY = re.compile(r"^\s*tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)")


@dataclass
class CUnitRun:
    outcomes: dict[str, str] = field(default_factory=dict)  # "Suite.Test" -> passed/skipped/failed
    total: int = 0
    ran: int = 0
    passed: int = 0  # as CUnit counts them: skipped tests count as passed
    failed: int = 0

    @property
    def real_passes(self) -> int:
        return sum(1 for v in self.outcomes.values() if v == "passed")

    @property
    def skipped(self) -> list[str]:
        return sorted(k for k, v in self.outcomes.items() if v == "skipped")

    @property
    def failures(self) -> list[str]:
        return sorted(k for k, v in self.outcomes.items() if v == "failed")


def parse(text: str) -> CUnitRun:
    """Outcome of every test from CUnit's verdict word (``passed``/``FAILED``) that ends its
    output; a test that printed ``[SKIPPED]`` first counts as skipped, not as a real pass."""
    run = CUnitRun()
    suite = ""
    current: str | None = None
    skipped = False
    for line in text.splitlines():
        if m := _SUITE.match(line):
            suite, current = m["name"], None
            continue
        if m := _SUMMARY.match(line):
            run.total, run.ran, run.passed, run.failed = (int(m[i]) for i in range(1, 5))
            continue
        if m := _TEST.match(line):
            current, skipped = f"{suite}.{m['name']}", False
            body = line[m.end():].lstrip()
            if body.startswith("passed"):
                run.outcomes[current], current = "passed", None
            elif body.startswith("FAILED"):
                run.outcomes[current], current = "failed", None
            else:
                skipped = "[SKIPPED]" in body
            continue
        if current is None:
            continue
        word = line.strip()
        if word == "passed":
            run.outcomes[current], current = ("skipped" if skipped else "passed"), None
        elif word == "FAILED":
            run.outcomes[current], current = "failed", None
        elif "[SKIPPED]" in line:
            skipped = True
    return run
