"""A row of the table: both sides run --runs times, medians, ratio and goal."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.common import Options, say
from bench.processes import cpu_seconds, drop_caches, peak_rss_mib

Probe = Callable[[], float]
Counted = Callable[[], tuple[float, int]]  # a figure and the number of requests behind it


@dataclass
class Row:
    test: str
    unit: str
    ours: list[float]
    reference: list[float] = field(default_factory=list)
    lower_is_better: bool = False
    goal: float | None = None

    @property
    def ours_median(self) -> float:
        return statistics.median(self.ours)

    @property
    def reference_median(self) -> float | None:
        return statistics.median(self.reference) if self.reference else None

    @property
    def ratio(self) -> float | None:
        ref = self.reference_median
        return self.ours_median / ref if ref else None

    @property
    def meets_goal(self) -> bool | None:
        if self.goal is None or self.ratio is None:
            return None
        return self.ratio <= self.goal if self.lower_is_better else self.ratio >= self.goal

    @property
    def spread(self) -> float | None:
        """(max - min) / median over the runs, the larger of the two sides; None for one run."""
        spreads = [(max(v) - min(v)) / statistics.median(v)
                   for v in (self.ours, self.reference) if len(v) > 1 and statistics.median(v)]
        return max(spreads, default=None)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(ours_median=self.ours_median, reference_median=self.reference_median,
                    ratio=self.ratio, meets_goal=self.meets_goal, spread=self.spread)
        return data


def measure(opts: Options, test: str, unit: str, ours: Probe, reference: Probe | None, *,
            cold: bool = False, before: Callable[[], None] | None = None,
            goal: float | None = None) -> Row:
    """Run both sides --runs times, alternating which goes first; cold drops the page cache
    before every single run."""
    row = Row(test, unit, [], [], goal=goal)
    sides: list[tuple[list[float], Probe]] = [(row.ours, ours)]
    if reference is not None:
        sides.append((row.reference, reference))
    for i in range(opts.runs):
        for values, probe in sides if i % 2 == 0 else sides[::-1]:
            if before is not None:
                before()
            if cold:
                drop_caches(opts)
            values.append(probe())
    ref = f", reference {row.reference_median:.1f}" if row.reference else ""
    say(f"  {test}: ours {row.ours_median:.1f}{ref} {unit}")
    return row


def memory_row(test: str, ours_pid: int, reference_pid: int | None) -> Row:
    ref = [peak_rss_mib(reference_pid)] if reference_pid is not None else []
    return Row(test, "MiB", [peak_rss_mib(ours_pid)], ref, lower_is_better=True)



@dataclass
class CpuMeter:
    """The CPU time (user + system) a process spends per request, in µs, over each run of a
    probe it watches."""

    pid: int
    samples: list[float] = field(default_factory=list)

    def watch(self, probe: Counted) -> Probe:
        def watched() -> float:
            before = cpu_seconds(self.pid)
            figure, requests = probe()
            self.samples.append((cpu_seconds(self.pid) - before) / max(requests, 1) * 1e6)
            return figure
        return watched


def cpu_row(test: str, ours: CpuMeter, reference: CpuMeter) -> Row:
    row = Row(test, "µs", ours.samples, reference.samples, lower_is_better=True)
    say(f"  {test}: ours {row.ours_median:.1f}, reference {row.reference_median:.1f} µs")
    return row
