"""Running one section: its needs, the shared random data, its outcome."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import CHILD_CWD, BenchError, MiB, Options, say
from bench.measure import Row
from bench.processes import Resources
from bench.sections import Data, Section


@dataclass
class Outcome:
    section: Section
    status: str  # "ok", "skipped", "failed"
    reason: str = ""
    rows: list[Row] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"title": self.section.title, "ours": self.section.ours_label,
                "reference": self.section.reference_label, "status": self.status,
                "reason": self.reason, "rows": [r.to_json() for r in self.rows]}


def have_blockbridge() -> str | None:
    """None if `python -m blockbridge(_target)` works, else why not."""
    done = subprocess.run([sys.executable, "-c", "import blockbridge, blockbridge_target"],
                          capture_output=True, text=True, timeout=60, cwd=CHILD_CWD)
    if done.returncode == 0:
        return None
    return f"blockbridge is not importable by {sys.executable}"


def missing(section: Section) -> str | None:
    """Why SECTION cannot run here, or None."""
    if section.root_for and os.geteuid() != 0:
        return f"needs root ({section.root_for})"
    for need in section.needs:
        found = os.path.exists(need) if need.startswith("/") else shutil.which(need)
        if not found:
            return f"needs {need}, which is not available"
    if section.check is not None and (why := section.check()):
        return why
    return have_blockbridge()


def make_data(opts: Options) -> Data:
    """SIZE bytes of random data, written once: SOURCE, and DISK as a copy of it."""
    data = Data(opts.workdir / "disk.img", opts.workdir / "source.img")
    if data.disk.exists():
        return data
    needed = 2 * opts.size + 2 * opts.scale_read_bytes + 256 * MiB
    if shutil.disk_usage(opts.workdir).free < needed:
        raise BenchError(f"{opts.workdir} needs {needed // MiB} MiB free")
    say(f"writing {opts.size // MiB} MiB of random data")
    with data.source.open("wb") as f:
        for offset in range(0, opts.size, 8 * MiB):
            f.write(os.urandom(min(8 * MiB, opts.size - offset)))
    shutil.copyfile(data.source, data.disk)
    os.sync()
    return data


def log_tails(workdir: Path, lines: int = 15) -> str:
    parts = []
    for log in sorted(workdir.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        if tail:
            parts.append(f"--- {log.name}\n" + "\n".join(tail))
    return "\n".join(parts)


def run_section(opts: Options, section: Section) -> Outcome:
    reason = missing(section)
    if reason:
        say(f"[{section.name}] skipped: {reason}")
        return Outcome(section, "skipped", reason)
    say(f"[{section.name}] {section.title}")
    workdir = opts.workdir / section.name
    workdir.mkdir()
    try:
        data = make_data(opts)
        with Resources(workdir) as res:
            rows = section.body(opts, res, data)
    except (BenchError, OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
        say(f"[{section.name}] FAILED: {exc}\n{log_tails(workdir)}")
        return Outcome(section, "failed", str(exc))
    return Outcome(section, "ok", rows=rows)

