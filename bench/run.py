#!/usr/bin/env python3
"""Benchmark blockbridge against tgtd, libiscsi, nbdkit + nbdfuse and qemu-storage-daemon.

One command runs every comparison on the same machine and the same data and prints a
table of medians with ratios (ours / reference):

    python bench/run.py [--runs N] [--quick] [--only SECTION] [--json FILE]
    python bench/run.py --compare A.json B.json

See docs/benchmarks.md for what each row measures and the goals the ratios are held to.
Everything the run starts is stopped by PID at the end or on Ctrl-C, every mount is
unmounted and every loop device detached; work files live in a temporary directory
that is removed at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the bench package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import compileall
import contextlib
import datetime
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from types import FrameType

from bench.common import CHILD_CWD, GiB, MiB, Options, say
from bench.compare import compare
from bench.processes import mounted_under
from bench.report import Context, load_average, machine_fingerprint, report, write_json
from bench.runner import run_section
from bench.sections import SECTION_LIST, SECTIONS


def snapshot_blockbridge(dest: Path) -> str:
    """Copy the installed blockbridge packages into DEST and put DEST first on the children's
    PYTHONPATH, so that every daemon of the run runs the same code even if the installation
    changes meanwhile. Returns its version and git commit, if it has one."""
    code = "import blockbridge, blockbridge_target as t; print(blockbridge.__version__); " \
           "print(blockbridge.__file__); print(t.__file__)"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60, check=True, cwd=CHILD_CWD)
    except (OSError, subprocess.SubprocessError):
        return "(not importable)"
    version, *files = done.stdout.strip().splitlines()
    where = Path(files[0]).parent
    git = subprocess.run(["git", "-C", str(where), "describe", "--always", "--dirty"],
                         capture_output=True, text=True, timeout=30)
    if git.returncode == 0 and git.stdout.strip():
        version += f" (git {git.stdout.strip()})"
    for name, file in zip(("blockbridge", "blockbridge_target"), files, strict=True):
        shutil.copytree(Path(file).parent, dest / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
        # compiled once, as an installed package is: a daemon that compiles its modules
        # at every start (PYTHONDONTWRITEBYTECODE, or a copy it cannot write to) keeps
        # about 1.5 MiB more memory and starts slower
        compileall.compile_dir(dest / name, quiet=1)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, (str(dest), os.environ.get("PYTHONPATH"))))
    return version



def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMGT]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use e.g. 64M or 1G")
    value: int = int(m[1]) * 1024 ** " KMGT".index((m[2] or " ").upper())
    if value < MiB or value % MiB:
        raise argparse.ArgumentTypeError("the size must be a whole number of MiB, at least 1M")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__.split("\n\n")[0],
        epilog=f"sections: {', '.join(SECTIONS)}. See docs/benchmarks.md.")
    p.add_argument("--runs", type=int, default=3, help="runs per figure; the median is shown "
                   "(default 3)")
    p.add_argument("--quick", action="store_true", help="one run, 1 s per time-based run, "
                   "at most 128 MiB per dd (a smoke test, not a measurement)")
    p.add_argument("--only", action="append", choices=SECTIONS, metavar="SECTION",
                   help=f"run only this section (repeatable): {', '.join(SECTIONS)}")
    p.add_argument("--size", type=parse_size, default=GiB,
                   help="size of the random data served and copied (default 1G)")
    p.add_argument("--seconds", type=int, help="length of each time-based run (default 5)")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                   help="where to create the temporary work directory (default /var/tmp)")
    p.add_argument("--keep-workdir", action="store_true",
                   help="keep the work directory (logs, data) for inspection")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="compare two result files of the same machine and exit")
    return p


def can_drop_caches() -> bool:
    return os.access("/proc/sys/vm/drop_caches", os.W_OK)


def interrupt(signum: int, frame: FrameType | None) -> None:
    """First SIGINT/SIGTERM: unwind (cleanup runs); later ones are ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def remove_workdir(workdir: Path, keep: bool) -> None:
    if leftovers := mounted_under(workdir):
        say(f"warning: still mounted, not removing {workdir}: {', '.join(leftovers)}")
    elif keep:
        say(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def work_directory(parent: Path, keep: bool) -> Iterator[Path]:
    parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="blockbridge-bench-", dir=parent)).resolve()
    try:
        yield workdir
    finally:
        remove_workdir(workdir, keep)


def benchmark(args: argparse.Namespace) -> int:
    ctx = Context(started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                  fingerprint=machine_fingerprint(), blockbridge="", load_start=load_average())
    wanted = [s for s in SECTION_LIST if not args.only or s.name in args.only]
    with work_directory(args.workdir, args.keep_workdir) as workdir:
        ctx.blockbridge = snapshot_blockbridge(workdir / "code")
        opts = Options(runs=1 if args.quick else args.runs,
                       seconds=args.seconds or (1 if args.quick else 5), size=args.size,
                       quick=args.quick, workdir=workdir, drop_caches=can_drop_caches())
        outcomes = [run_section(opts, s) for s in wanted]
    ctx.load_end = load_average()
    print(report(opts, outcomes, ctx))
    if args.json:
        write_json(args.json, opts, outcomes, ctx)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if args.runs < 1:
        print("run.py: --runs must be at least 1", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        return benchmark(args)
    except KeyboardInterrupt:
        say("interrupted: everything started was stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
