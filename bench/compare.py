"""--compare: two result files of the same machine, row by row."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.common import say
from bench.report import fmt, render
from bench.sections import SECTIONS

MACHINE_KEYS = ("hostname", "cpu_model", "nproc", "memory_kib")


def load_result(path: str) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"run.py: cannot read {path}: {exc}") from None
    if not isinstance(doc, dict) or "fingerprint" not in doc or "sections" not in doc:
        raise SystemExit(f"run.py: {path} is not a result file of bench/run.py")
    return doc


def machine_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [f"{key}: {a.get(key)!r} != {b.get(key)!r}" for key in MACHINE_KEYS
            if a.get(key) != b.get(key)]


def compare(path_a: str, path_b: str) -> int:
    """Print B against A row by row; refuse (exit status 2) results of different machines."""
    try:
        a, b = load_result(path_a), load_result(path_b)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    if diffs := machine_differences(a["fingerprint"], b["fingerprint"]):
        print(f"run.py: refusing to compare results of different machines ({'; '.join(diffs)})",
              file=sys.stderr)
        return 2
    for key in ("kernel", "python"):
        if a["fingerprint"].get(key) != b["fingerprint"].get(key):
            say(f"note: {key} differs: {a['fingerprint'].get(key)} -> "
                f"{b['fingerprint'].get(key)}")
    print(f"A = {path_a} ({a.get('started')})\nB = {path_b} ({b.get('started')})\n")
    print("\n".join(compare_lines(a["sections"], b["sections"])))
    return 0


def compare_lines(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    lines = []
    for name in (n for n in SECTIONS if n in a and n in b):
        rows_a = {r["test"]: r for r in a[name]["rows"]}
        table = []
        for row in b[name]["rows"]:
            old = rows_a.get(row["test"])
            if old is None:
                continue
            change = row["ours_median"] / old["ours_median"] if old["ours_median"] else None
            table.append((f"  {row['test']}", row["unit"], fmt(old["ours_median"]),
                          fmt(row["ours_median"]), fmt(change), fmt(old["ratio"]),
                          fmt(row["ratio"])))
        if table:
            headers = ("  test", "unit", "A ours", "B ours", "B/A", "A ratio", "B ratio")
            lines += [f"[{name}]", *render(headers, table), ""]
    return lines or ["no section with rows in both files"]

