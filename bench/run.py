#!/usr/bin/env python3
"""Benchmark blockbridge against tgtd, libiscsi and nbdkit + nbdfuse on this machine.

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

import argparse
import contextlib
import datetime
import fcntl
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

OUR_IQN = "iqn.2026-11.local.blockbridge:bench.ours"
TGTD_IQN = "iqn.2026-11.local.blockbridge:bench.tgtd"
INITIATOR = "iqn.2026-11.local.blockbridge:bench.initiator"
SCALE_SIZES = (1 * GiB, 16 * GiB)
STRIDE_BLOCKS = 7919  # a prime: 4 KiB writes this many 4 KiB blocks apart cover the LUN
MACHINE_KEYS = ("hostname", "cpu_model", "nproc", "memory_kib")
LISTENING = re.compile(r"listening on (?:\[[^\]]+\]|[^\s:]+):(\d+)")
SECTIONS = ("target", "fuse", "loop", "initiator", "scaling")
# Children run in "/", so that `python -m blockbridge` imports the installed package and not
# a checkout that happens to be the current directory.
CHILD_CWD = "/"


class BenchError(Exception):
    """A step of the benchmark failed; the section is reported as failed."""


@dataclass(frozen=True)
class Options:
    runs: int
    seconds: int
    size: int
    quick: bool
    workdir: Path
    drop_caches: bool

    @property
    def stream_bytes(self) -> int:
        """How much dd moves per run."""
        return min(self.size, 128 * MiB) if self.quick else self.size

    @property
    def scale_read_bytes(self) -> int:
        return min(self.size, (64 if self.quick else 256) * MiB)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ processes and cleanup


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop_pid(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM a process that is not our child, then SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if wait_gone(pid, timeout):
            return
    say(f"warning: process {pid} did not exit")


def stop_child(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue
    say(f"warning: process {proc.pid} did not exit")


def run(cmd: Sequence[str], timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion; on timeout or Ctrl-C subprocess.run kills it by PID."""
    try:
        done = subprocess.run(list(cmd), capture_output=True, encoding="utf-8",
                              errors="replace", timeout=timeout, stdin=subprocess.DEVNULL,
                              start_new_session=True, cwd=CHILD_CWD)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(cmd)} did not finish within {timeout:.0f} s") from None
    if check and done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise BenchError(f"{' '.join(cmd)} exited with {done.returncode}: " + " | ".join(tail))
    return done


def quietly(action: Callable[..., object], *args: Any) -> None:
    """Run a cleanup step; a failing step is reported and does not stop the others."""
    try:
        action(*args)
    except Exception as exc:
        say(f"warning: cleanup step {getattr(action, '__name__', action)} failed: {exc}")


class Resources(contextlib.ExitStack):
    """What one section starts; closing it undoes everything in reverse order."""

    def __init__(self, workdir: Path) -> None:
        super().__init__()
        self.workdir = workdir

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def spawn(self, name: str, cmd: Sequence[str],
              stop_timeout: float = 15.0) -> subprocess.Popen[bytes]:
        with self.log_path(name).open("ab") as log:
            proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=CHILD_CWD)
        self.callback(quietly, stop_child, proc, stop_timeout)
        return proc

    def defer(self, action: Callable[..., object], *args: Any) -> None:
        self.callback(quietly, action, *args)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], what: str, timeout: float,
               proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not ready within {timeout:.0f} s")
        time.sleep(0.05)


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set size) of a running process, in MiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
    if not m:
        raise BenchError(f"no VmHWM in /proc/{pid}/status")
    return int(m[1]) / 1024


def mounted_under(root: Path) -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(root) or point.startswith(f"{root}/"):
            points.append(point)
    return points


def drop_caches(opts: Options) -> None:
    if opts.drop_caches:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


# ------------------------------------------------------------------------------ daemons


def blockbridge_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "blockbridge", *args]


def start_our_target(res: Resources, disk: Path, name: str = "our-target") -> tuple[str, int]:
    """blockbridge-target serving DISK as LUN 0 of OUR_IQN; returns (portal, pid)."""
    cmd = [sys.executable, "-m", "blockbridge_target", "--disk", str(disk), "--target-name",
           OUR_IQN, "--portal", "127.0.0.1:0"]
    proc = res.spawn(name, cmd)
    log = res.log_path(name)
    port: list[int] = []

    def listening() -> bool:
        if m := LISTENING.search(log.read_text(errors="replace")):
            port.append(int(m[1]))
        return bool(port)

    wait_until(listening, "blockbridge-target", 30, proc)
    return f"127.0.0.1:{port[0]}", proc.pid


def tgtadm(control: int, *args: str) -> None:
    run(["tgtadm", "-C", str(control), "--lld", "iscsi", *args], timeout=15)


def tgtd_control_free(control: int) -> bool:
    """Whether no running tgtd holds the lock of this control port number."""
    try:
        fd = os.open(f"/var/run/tgtd/socket.{control}.lock", os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def start_tgtd(res: Resources, disk: Path) -> tuple[str, int]:
    """tgtd with DISK as LUN 1 of TGTD_IQN (LUN 0 is its controller); returns (portal, pid)."""
    port = free_port()
    control = next(c for c in range(1000 + port % 20000, 32000) if tgtd_control_free(c))
    proc = res.spawn("tgtd", ["tgtd", "-f", "-C", str(control), "--iscsi",
                              f"portal=127.0.0.1:{port}"],
                     stop_timeout=3)  # tgtd ignores SIGTERM while it has targets

    def answers() -> bool:  # ours, not another tgtd that took the control port meanwhile
        try:
            tgtadm(control, "--op", "show", "--mode", "target")
        except BenchError:
            return False
        return proc.poll() is None and not tgtd_control_free(control)

    wait_until(answers, "tgtd", 15, proc)
    tgtadm(control, "--op", "new", "--mode", "target", "--tid", "1", "-T", TGTD_IQN)
    tgtadm(control, "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
           "-b", str(disk))
    tgtadm(control, "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
    return f"127.0.0.1:{port}", proc.pid


def start_nbdkit(res: Resources, disk: Path) -> tuple[str, int]:
    """nbdkit's file plugin on DISK over loopback TCP; returns (uri, pid)."""
    port = free_port()
    pidfile = res.workdir / "nbdkit.pid"
    proc = res.spawn("nbdkit", ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port),
                                "--pidfile", str(pidfile), "file", str(disk)])
    wait_until(pidfile.exists, "nbdkit", 15, proc)
    return f"nbd://127.0.0.1:{port}", proc.pid


def find_mount_daemon(mnt: Path) -> int:
    """The PID of the background `blockbridge mount` process serving MNT."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
        if module == "blockbridge" and "mount" in argv and str(mnt) in argv:
            return int(entry.name)
    raise BenchError(f"no blockbridge mount process found for {mnt}")


def unmount_blockbridge(mnt: Path) -> None:
    """`blockbridge umount`, then the lazy FUSE unmount and SIGKILL if that did not work."""
    try:
        pid: int | None = find_mount_daemon(mnt)
    except BenchError:
        pid = None
    run(blockbridge_cmd("umount", str(mnt)), timeout=90, check=False)
    if os.path.ismount(mnt):
        run(["fusermount3", "-u", "-z", str(mnt)], timeout=30, check=False)
    if pid is not None:
        stop_pid(pid)


def mount_blockbridge(res: Resources, portal: str, mnt: Path) -> int:
    """`blockbridge mount` in the background; returns the PID of the mount process."""
    mnt.mkdir(parents=True, exist_ok=True)
    res.defer(unmount_blockbridge, mnt)
    run(blockbridge_cmd("mount", portal, str(mnt), "--initiator-name", INITIATOR,
                        "--log-file", str(res.log_path(f"mount-{mnt.name}"))), timeout=120)
    return find_mount_daemon(mnt)


def unmount_nbdfuse(mnt: Path, proc: subprocess.Popen[bytes]) -> None:
    run(["fusermount3", "-u", str(mnt)], timeout=30, check=False)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(15)
    stop_child(proc)
    if os.path.ismount(mnt):
        run(["fusermount3", "-u", "-z", str(mnt)], timeout=30, check=False)


def mount_nbdfuse(res: Resources, uri: str, mnt: Path) -> tuple[Path, int]:
    """nbdfuse MNT/nbd URI; returns (file, pid)."""
    mnt.mkdir(parents=True, exist_ok=True)
    pidfile = res.workdir / "nbdfuse.pid"
    proc = res.spawn("nbdfuse", ["nbdfuse", "-P", str(pidfile), str(mnt / "nbd"), uri])
    res.defer(unmount_nbdfuse, mnt, proc)
    wait_until(pidfile.exists, "nbdfuse", 30, proc)
    return mnt / "nbd", proc.pid


def detach_loop(device: str) -> None:
    for _ in range(20):
        if run(["losetup", "-d", device], timeout=30, check=False).returncode == 0:
            return
        time.sleep(0.5)
    raise BenchError(f"cannot detach {device}")


def attach_loop(res: Resources, path: Path) -> tuple[str, bool]:
    """losetup --direct-io=on; returns (device, whether direct I/O is really on)."""
    for _ in range(10):  # another user may grab the same free device between find and set
        done = run(["losetup", "--direct-io=on", "-f", "--show", str(path)], timeout=30,
                   check=False)
        device = done.stdout.strip()
        if device.startswith("/dev/"):
            res.defer(detach_loop, device)
            dio = run(["losetup", "-l", "-n", "-O", "DIO", device], timeout=30).stdout.strip()
            return device, dio == "1"
        time.sleep(0.5)
    raise BenchError(f"losetup failed on {path}: {done.stderr.strip()}")


# ---------------------------------------------------------------------------- workloads


def iscsi_perf(url: str, block: int, depth: int, random: bool, seconds: int) -> float:
    """libiscsi's iscsi-perf READ16 loop; returns requests per second."""
    cmd = ["iscsi-perf", "-i", INITIATOR, "-m", str(depth), "-b", str(block // 512),
           "-t", str(seconds), *(["-r"] if random else []), url]
    out = run(cmd, timeout=seconds + 60).stdout
    averages = re.findall(r"iops average (\d+)", out)
    if not averages or "finished" not in out:
        raise BenchError(f"iscsi-perf gave no result: {out.strip()[-200:]}")
    return float(averages[-1])


def qemu_bench(url: str, block: int, depth: int, count: int, step: int) -> float:
    """`qemu-img bench -w` (libiscsi inside qemu); returns the seconds it took."""
    cmd = ["qemu-img", "bench", "-f", "raw", "-w", "--pattern=165", "-c", str(count),
           "-d", str(depth), "-s", str(block), "-S", str(step), url]
    out = run(cmd, timeout=900).stdout
    m = re.search(r"Run completed in ([0-9.]+) seconds", out)
    if not m:
        raise BenchError(f"qemu-img bench gave no result: {out.strip()[-200:]}")
    return max(float(m[1]), 1e-3)


def qemu_write_rate(url: str, block: int, depth: int, step: int, seconds: int) -> float:
    """Write requests per second, with a count sized from a short probe to last SECONDS."""
    probe = max(64, 4 * depth)
    rate = probe / qemu_bench(url, block, depth, probe, step)
    count = int(min(max(rate * seconds, probe), 10_000_000))
    return count / qemu_bench(url, block, depth, count, step)


def dd(source: str, dest: str, count: int, flags: Sequence[str]) -> float:
    """dd bs=1M; returns MiB/s from the byte count and time dd reports."""
    cmd = ["dd", f"if={source}", f"of={dest}", "bs=1M", f"count={count}", *flags]
    err = run(cmd, timeout=1800).stderr
    m = re.search(r"^(\d+) bytes .* copied, ([0-9.e+-]+) s", err, re.MULTILINE)
    if not m:
        raise BenchError(f"dd gave no result: {err.strip()[-200:]}")
    return int(m[1]) / MiB / max(float(m[2]), 1e-6)


def fio(path: str, rw: str, block: int, depth: int, seconds: int, out: Path) -> dict[str, Any]:
    """One fio job with libaio and O_DIRECT; returns the job's read or write statistics."""
    escaped = path.replace(":", "\\:")  # fio splits file names at colons
    cmd = ["fio", "--name=bench", f"--filename={escaped}", f"--rw={rw}", f"--bs={block}",
           f"--iodepth={depth}", "--ioengine=libaio", "--direct=1", "--time_based",
           f"--runtime={seconds}", "--randrepeat=0", "--norandommap", "--allow_file_create=0",
           "--output-format=json", f"--output={out}"]
    run(cmd, timeout=seconds + 120)
    job = json.loads(out.read_text())["jobs"][0]
    stats: dict[str, Any] = job["write" if "write" in rw else "read"]
    if job.get("error") or not stats.get("io_bytes"):
        raise BenchError(f"fio on {path} ({rw}) moved no data (error {job.get('error')})")
    return stats


def fio_iops(path: str, rw: str, block: int, depth: int, seconds: int, out: Path) -> float:
    return float(fio(path, rw, block, depth, seconds, out)["iops"])


def fio_mib_s(path: str, rw: str, block: int, depth: int, seconds: int, out: Path) -> float:
    return float(fio(path, rw, block, depth, seconds, out)["bw_bytes"]) / MiB


def warm(path: Path) -> None:
    """Read a file once so that it comes from the page cache afterwards."""
    with path.open("rb") as f:
        while f.read(8 * MiB):
            pass


# -------------------------------------------------------------------------- measurement

Probe = Callable[[], float]


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


# ----------------------------------------------------------------------------- sections


@dataclass
class Data:
    """The random data every section reads: DISK is served, SOURCE feeds dd writes."""

    disk: Path
    source: Path


@dataclass
class Section:
    name: str
    title: str
    ours_label: str
    reference_label: str
    needs: tuple[str, ...]
    body: Callable[[Options, Resources, Data], list[Row]]
    root_for: str = ""  # what root is needed for, if it is


def section_target(opts: Options, res: Resources, data: Data) -> list[Row]:
    portal, ours_pid = start_our_target(res, data.disk)
    tgtd_portal, tgtd_pid = start_tgtd(res, data.disk)
    ours_url = f"iscsi://{portal}/{OUR_IQN}/0"
    tgtd_url = f"iscsi://{tgtd_portal}/{TGTD_IQN}/1"
    rows = []
    for label, block, depth, random, goal in (
        ("seq read 1 MiB, qd 8", MiB, 8, False, 0.8),
        ("seq read 128 KiB, qd 8", 128 * KiB, 8, False, 0.8),
        ("random read 4 KiB, qd 1", 4 * KiB, 1, True, None),
        ("random read 4 KiB, qd 32", 4 * KiB, 32, True, 0.5),
    ):
        unit, scale = ("IOPS", 1.0) if random else ("MiB/s", block / MiB)

        def reader(url: str, block: int = block, depth: int = depth, random: bool = random,
                   scale: float = scale) -> Probe:
            return lambda: iscsi_perf(url, block, depth, random, opts.seconds) * scale

        rows.append(measure(opts, f"{label} (iscsi-perf)", unit, reader(ours_url),
                            reader(tgtd_url), cold=True, goal=goal))
    if not qemu_iscsi_missing():
        rows += target_writes(opts, ours_url, tgtd_url)
    rows.append(memory_row("peak RSS: blockbridge-target | tgtd", ours_pid, tgtd_pid))
    return rows


def target_writes(opts: Options, ours_url: str, tgtd_url: str) -> list[Row]:
    rows = []
    for label, block, depth, step, goal in (
        ("seq write 1 MiB, qd 8", MiB, 8, MiB, 0.8),
        ("seq write 128 KiB, qd 8", 128 * KiB, 8, 128 * KiB, 0.8),
        ("strided write 4 KiB, qd 1", 4 * KiB, 1, STRIDE_BLOCKS * 4 * KiB, None),
        ("strided write 4 KiB, qd 32", 4 * KiB, 32, STRIDE_BLOCKS * 4 * KiB, 0.5),
    ):
        unit, scale = ("IOPS", 1.0) if block == 4 * KiB else ("MiB/s", block / MiB)

        def writer(url: str, block: int = block, depth: int = depth, step: int = step,
                   scale: float = scale) -> Probe:
            return lambda: qemu_write_rate(url, block, depth, step, opts.seconds) * scale

        rows.append(measure(opts, f"{label} (qemu-img bench)", unit, writer(ours_url),
                            writer(tgtd_url), goal=goal))
    return rows


def fuse_pair(res: Resources, data: Data) -> tuple[Path, Path, dict[str, int]]:
    """Our mount of our target and nbdfuse of nbdkit, both on DISK; returns the two files
    and the PIDs of the four daemons."""
    portal, target_pid = start_our_target(res, data.disk)
    mount_pid = mount_blockbridge(res, portal, res.workdir / "bb")
    uri, nbdkit_pid = start_nbdkit(res, data.disk)
    nbd_file, nbdfuse_pid = mount_nbdfuse(res, uri, res.workdir / "nbd")
    pids = {"target": target_pid, "mount": mount_pid, "nbdkit": nbdkit_pid,
            "nbdfuse": nbdfuse_pid}
    return res.workdir / "bb" / OUR_IQN / "lun0", nbd_file, pids


def file_rows(opts: Options, res: Resources, data: Data, ours: str, reference: str,
              goals: bool) -> list[Row]:
    """dd and fio on two files (or devices) that hold the same data; GOALS: hold the rows to
    the issue's goals."""
    count = opts.stream_bytes // MiB
    src = str(data.source)
    rows = []
    for label, flags in (("dd read bs=1M, buffered", []),
                         ("dd read bs=1M, iflag=direct", ["iflag=direct"])):
        rows.append(measure(opts, label, "MiB/s", partial(dd, ours, "/dev/null", count, flags),
                            partial(dd, reference, "/dev/null", count, flags), cold=True,
                            goal=1.0 if goals else None))
    for label, flags in (("dd write bs=1M, buffered, fsync", ["conv=notrunc,fsync"]),
                         ("dd write bs=1M, oflag=direct, fsync",
                          ["conv=notrunc,fsync", "oflag=direct"])):
        rows.append(measure(opts, label, "MiB/s", partial(dd, src, ours, count, flags),
                            partial(dd, src, reference, count, flags),
                            before=partial(warm, data.source), goal=1.0 if goals else None))
    out = res.workdir / "fio.json"
    for rw, depth, goal in (("randread", 1, None), ("randread", 32, 0.5),
                            ("randwrite", 1, None), ("randwrite", 32, 0.5)):
        job = (rw, 4 * KiB, depth, opts.seconds, out)
        rows.append(measure(opts, f"fio {rw} 4 KiB, qd {depth}", "IOPS",
                            partial(fio_iops, ours, *job), partial(fio_iops, reference, *job),
                            cold=rw == "randread", goal=goal if goals else None))
    return rows


def fuse_memory_rows(pids: dict[str, int]) -> list[Row]:
    return [memory_row("peak RSS: blockbridge mount | nbdfuse", pids["mount"], pids["nbdfuse"]),
            memory_row("peak RSS: blockbridge-target | nbdkit", pids["target"], pids["nbdkit"])]


def section_fuse(opts: Options, res: Resources, data: Data) -> list[Row]:
    ours, reference, pids = fuse_pair(res, data)
    rows = file_rows(opts, res, data, str(ours), str(reference), goals=True)
    return rows + fuse_memory_rows(pids)


def section_loop(opts: Options, res: Resources, data: Data) -> list[Row]:
    ours, reference, pids = fuse_pair(res, data)
    ours_dev, ours_dio = attach_loop(res, ours)
    ref_dev, ref_dio = attach_loop(res, reference)
    if not (ours_dio and ref_dio):
        say("  note: losetup could not turn direct I/O on for "
            f"{'' if ours_dio else 'blockbridge '}{'' if ref_dio else 'nbdfuse'}")
    rows = file_rows(opts, res, data, ours_dev, ref_dev, goals=False)
    return rows + fuse_memory_rows(pids)


def section_initiator(opts: Options, res: Resources, data: Data) -> list[Row]:
    portal, tgtd_pid = start_tgtd(res, data.disk)
    mount_pid = mount_blockbridge(res, portal, res.workdir / "bb")
    lun = str(res.workdir / "bb" / TGTD_IQN / "lun1")
    url = f"iscsi://{portal}/{TGTD_IQN}/1"
    out = res.workdir / "fio.json"
    rows = []
    for label, rw, block, depth in (("seq read 1 MiB, qd 8", "read", MiB, 8),
                                    ("seq read 128 KiB, qd 8", "read", 128 * KiB, 8),
                                    ("random read 4 KiB, qd 1", "randread", 4 * KiB, 1),
                                    ("random read 4 KiB, qd 32", "randread", 4 * KiB, 32)):
        random = rw == "randread"
        unit, scale = ("IOPS", 1.0) if random else ("MiB/s", block / MiB)

        def ours(rw: str = rw, block: int = block, depth: int = depth,
                 random: bool = random) -> float:
            if random:
                return fio_iops(lun, rw, block, depth, opts.seconds, out)
            return fio_mib_s(lun, rw, block, depth, opts.seconds, out)

        def libiscsi(block: int = block, depth: int = depth, random: bool = random,
                     scale: float = scale) -> float:
            return iscsi_perf(url, block, depth, random, opts.seconds) * scale

        rows.append(measure(opts, label, unit, ours, libiscsi, cold=True))
    rows.append(memory_row("peak RSS: blockbridge mount", mount_pid, None))
    rows.append(memory_row("peak RSS: tgtd", tgtd_pid, None))
    return rows


def sparse_lun(workdir: Path, size: int, data: Data, head: int) -> Path:
    """A sparse file of SIZE whose first HEAD bytes hold the random data."""
    path = workdir / f"sparse-{size // GiB}g.img"
    with data.source.open("rb") as src, path.open("wb") as dst:
        dst.truncate(size)
        for offset in range(0, head, 8 * MiB):
            dst.write(src.read(min(8 * MiB, head - offset)))
    return path


def mount_and_read(opts: Options, workdir: Path, lun: Path, run_no: int) -> tuple[float, ...]:
    """Fresh target and mount on LUN; returns (mount + read seconds, target MiB, mount MiB)."""
    with Resources(workdir) as res:
        portal, target_pid = start_our_target(res, lun, f"target-{lun.stem}-{run_no}")
        drop_caches(opts)
        mnt = workdir / f"mnt-{lun.stem}-{run_no}"
        start = time.monotonic()
        mount_pid = mount_blockbridge(res, portal, mnt)
        count = opts.scale_read_bytes // MiB
        dd(str(mnt / OUR_IQN / "lun0"), "/dev/null", count, ["iflag=direct"])
        elapsed = time.monotonic() - start
        return elapsed, peak_rss_mib(target_pid), peak_rss_mib(mount_pid)


def section_scaling(opts: Options, res: Resources, data: Data) -> list[Row]:
    head = opts.scale_read_bytes
    small, large = (sparse_lun(res.workdir, size, data, head) for size in SCALE_SIZES)
    samples: dict[Path, list[tuple[float, ...]]] = {small: [], large: []}
    for i in range(opts.runs):
        for lun in (small, large) if i % 2 == 0 else (large, small):
            samples[lun].append(mount_and_read(opts, res.workdir, lun, i))
    label = f"{SCALE_SIZES[1] // GiB} GiB | {SCALE_SIZES[0] // GiB} GiB"
    rows = []
    for index, (test, unit, goal) in enumerate((
        (f"mount + read {head // MiB} MiB ({label})", "s", 1.2),
        (f"peak RSS: blockbridge-target ({label})", "MiB", 1.1),
        (f"peak RSS: blockbridge mount ({label})", "MiB", 1.1),
    )):
        rows.append(Row(test, unit, [s[index] for s in samples[large]],
                        [s[index] for s in samples[small]], lower_is_better=True, goal=goal))
        say(f"  {test}: {rows[-1].ours_median:.2f} | {rows[-1].reference_median:.2f} {unit}")
    return rows


FUSE_TOOLS = ("/dev/fuse", "fusermount3", "nbdkit", "nbdfuse", "dd", "fio")
SECTION_LIST = (
    Section("target", "blockbridge-target vs tgtd, same backing file, driven by libiscsi",
            "blockbridge-target", "tgtd", ("tgtd", "tgtadm", "iscsi-perf"), section_target,
            root_for="tgtd"),
    Section("fuse", "FUSE file: blockbridge mount + blockbridge-target vs nbdfuse + nbdkit "
            "file plugin, same backing file", "blockbridge", "nbdfuse", FUSE_TOOLS,
            section_fuse),
    Section("loop", "loop device (losetup --direct-io=on) on each FUSE file of the fuse "
            "section", "blockbridge", "nbdfuse", (*FUSE_TOOLS, "losetup"), section_loop,
            root_for="loop devices"),
    Section("initiator", "initiators reading from tgtd: blockbridge mount (fio on the FUSE "
            "file) vs libiscsi (iscsi-perf)", "blockbridge", "libiscsi",
            ("/dev/fuse", "fusermount3", "tgtd", "tgtadm", "iscsi-perf", "fio"),
            section_initiator, root_for="tgtd"),
    Section("scaling", "blockbridge-target + blockbridge mount on a sparse LUN: 16 GiB "
            "compared with 1 GiB (must not grow)", "16 GiB", "1 GiB",
            ("/dev/fuse", "fusermount3", "dd"), section_scaling),
)


# ----------------------------------------------------------------------- running sections


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
    return have_blockbridge()


def qemu_iscsi_missing() -> str | None:
    """Why the target section cannot have write rows (qemu-img with libiscsi), or None."""
    if not shutil.which("qemu-img"):
        return "qemu-img is not installed"
    done = run(["qemu-img", "--help"], timeout=30, check=False)
    if not re.search(r"^Supported formats:.* iscsi\b", done.stdout, re.MULTILINE):
        return "qemu-img has no iscsi driver (Debian: qemu-block-extra)"
    return None


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


# --------------------------------------------------------------------------- the report


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
           "MiB (peak RSS) and s: lower is better; spread = (max - min) / median over the "
           "runs, the larger of the two sides", cache,
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
    if ran & {"fuse", "loop", "initiator"}:
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
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, (str(dest), os.environ.get("PYTHONPATH"))))
    return version


def tool_versions() -> dict[str, str]:
    versions = {}
    for tool, flag in (("tgtd", "--version"), ("fio", "--version"), ("nbdkit", "--version"),
                       ("nbdfuse", "--version"), ("qemu-img", "--version")):
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


# -------------------------------------------------------------------------------- compare


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


# ----------------------------------------------------------------------------------- main


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
