"""The table printed at the end, its notes, and the JSON result file."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import MiB, Options
from bench.measure import Row
from bench.runner import Outcome
from bench.sections import STRIDE_BLOCKS
from bench.tools import qemu_iscsi_missing


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def goal_text(row: Row) -> str:
    if row.goal is None:
        return ""
    return f"{'<=' if row.lower_is_better else '>='}{row.goal:.1f}"


def verdict(row: Row) -> str:
    return {None: "", True: "ok", False: "MISS"}[row.meets_goal]


def render(headers: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    out = []
    for cells in (headers, *lines):
        left = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        out.append("  ".join((left, *rest)).rstrip())
    return out


def section_lines(outcome: Outcome) -> list[str]:
    s = outcome.section
    head = f"[{s.name}] {s.title}"
    if outcome.status != "ok":
        return [head, f"  {outcome.status}: {outcome.reason}"]
    headers = ("  test", "unit", s.ours_label, s.reference_label, "ratio", "goal", "",
               "spread")
    lines = [(f"  {r.test}", r.unit, fmt(r.ours_median), fmt(r.reference_median),
              fmt(r.ratio), goal_text(r), verdict(r),
              "" if r.spread is None else f"{100 * r.spread:.0f}%") for r in outcome.rows]
    return [head, *render(headers, lines)]


@dataclass
class Context:
    """What the figures of one run depend on besides the options."""

    started: str
    fingerprint: dict[str, Any]
    blockbridge: str
    load_start: str
    load_end: str = ""


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def notes(opts: Options, ctx: Context, ran: set[str]) -> list[str]:
    """The conditions behind the figures of the sections in RAN."""
    cache = ("the page cache is dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before "
             "every read run and every scaling run" if opts.drop_caches else
             "the page cache could NOT be dropped (not root): reads may come from memory")
    out = [f"figures are medians of {opts.runs} run(s); time-based runs last {opts.seconds} "
           f"s, dd moves {opts.stream_bytes // MiB} MiB of random data per run",
           "ratio = first figure / second figure; MiB/s and IOPS: higher is better; "
           "MiB (peak RSS), s and µs (CPU per request): lower is better; spread = (max - min) "
           "/ median over the runs, the larger of the two sides", cache,
           "peak RSS is VmHWM from /proc/PID/status, read at the end of the section (after "
           "all its runs); in scaling, each run has a fresh target and mount"]
    if "target" in ran and (why := qemu_iscsi_missing()):
        out.append(f"target: no write rows: {why}")
    if "target" in ran:
        out.append("target: iscsi-perf reads at random 512-byte LBAs; qemu-img bench has no "
                   f"random mode, so its 4 KiB writes step {STRIDE_BLOCKS} x 4 KiB at a time")
    if ran & {"fuse", "loop"}:
        out.append("fuse, loop: nbdfuse uses its default of up to 4 NBD connections "
                   "(multi-conn), blockbridge one iSCSI session; dd writes end with fsync")
    if "qsd" in ran:
        out.append("qsd: blockbridge mount and qemu-storage-daemon (libiscsi, cache.direct=on, "
                   "its FUSE export) are logged in to the same tgtd LUN at the same time")
    if "unprivileged" in ran:
        out.append("unprivileged: the user 'nobody' (through fusermount3) and root (mount(2)) "
                   "each mount the same blockbridge-target at the same time; fio on the "
                   "user's file runs as that user")
    if ran & {"fuse", "qsd", "unprivileged"}:
        out.append("fuse, qsd, unprivileged: CPU per request = user + system CPU time "
                   "(/proc/PID/stat, in clock ticks) of the process serving the FUSE file "
                   "over a run, divided by the requests of that run (dd: 1 MiB each; fio: "
                   "total_ios)")
    if ran & {"fuse", "loop", "initiator", "qsd", "unprivileged"}:
        out.append("fio: libaio, direct=1, one job")
    out.append(f"load average (1, 5, 15 min) at start {ctx.load_start}, at end {ctx.load_end}, "
               f"on {ctx.fingerprint['nproc']} CPU(s) shared by the load generator, the "
               "client and the server")
    return out


def report(opts: Options, outcomes: Sequence[Outcome], ctx: Context) -> str:
    fp = ctx.fingerprint
    lines = [f"blockbridge {ctx.blockbridge} benchmark, {ctx.started}, on {fp['hostname']} "
             f"({fp['cpu_model']}, {fp['nproc']} CPUs, {fp['memory_kib'] // 1024} MiB, kernel "
             f"{fp['kernel']}, Python {fp['python']})", ""]
    for outcome in outcomes:
        lines += [*section_lines(outcome), ""]
    if ran := {o.section.name for o in outcomes if o.status == "ok"}:
        lines += ["notes:", *(f"- {n}" for n in notes(opts, ctx, ran))]
    return "\n".join(lines)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_kib() -> int:
    m = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    return int(m[1]) if m else 0


def machine_fingerprint() -> dict[str, Any]:
    return {"hostname": socket.gethostname(), "cpu_model": cpu_model(),
            "nproc": os.cpu_count(), "kernel": platform.release(), "memory_kib": memory_kib(),
            "python": platform.python_version()}




def tool_versions() -> dict[str, str]:
    versions = {}
    for tool, flag in (("tgtd", "--version"), ("fio", "--version"), ("nbdkit", "--version"),
                       ("nbdfuse", "--version"), ("qemu-img", "--version"),
                       ("qemu-storage-daemon", "--version")):
        if shutil.which(tool):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run([tool, flag], capture_output=True, text=True, timeout=10)
                versions[tool] = (out.stdout or out.stderr).strip().splitlines()[0]
    return versions


def write_json(path: Path, opts: Options, outcomes: Sequence[Outcome], ctx: Context) -> None:
    ran = {o.section.name for o in outcomes if o.status == "ok"}
    doc = {"format": "blockbridge-bench/1", "started": ctx.started,
           "fingerprint": ctx.fingerprint, "blockbridge": ctx.blockbridge,
           "tools": tool_versions(),
           "options": {"runs": opts.runs, "seconds": opts.seconds, "size": opts.size,
                       "quick": opts.quick, "page_cache_dropped": opts.drop_caches},
           "load_average": {"start": ctx.load_start, "end": ctx.load_end},
           "sections": {o.section.name: o.to_json() for o in outcomes},
           "notes": notes(opts, ctx, ran)}
    path.write_text(json.dumps(doc, indent=1) + "\n")

