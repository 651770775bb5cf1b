"""The sections of the benchmark: what each starts and which rows it measures."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import OUR_IQN, TGTD_IQN, GiB, KiB, MiB, Options, say
from bench.measure import Counted, CpuMeter, Probe, Row, cpu_row, measure, memory_row
from bench.peers import (
    attach_loop,
    mount_blockbridge,
    mount_nbdfuse,
    start_nbdkit,
    start_our_target,
    start_qsd,
    start_tgtd,
)
from bench.processes import Resources, drop_caches, peak_rss_mib
from bench.tools import (
    dd,
    dd_counted,
    fio_iops,
    fio_iops_counted,
    fio_mib_s,
    iscsi_perf,
    qemu_iscsi_missing,
    qemu_write_rate,
    qsd_iscsi_missing,
    warm,
)
from bench.unprivileged import section_unprivileged, user_missing

SCALE_SIZES = (1 * GiB, 16 * GiB)
STRIDE_BLOCKS = 7919  # a prime: 4 KiB writes this many 4 KiB blocks apart cover the LUN


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
    check: Callable[[], str | None] | None = None  # why else it cannot run here, or None


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


@dataclass(frozen=True)
class Goals:
    """The ratios the rows of file_rows are held to; None: no goal."""

    dd: float | None = None
    depth1: float | None = None
    depth32: float | None = None


NBDFUSE_GOALS = Goals(dd=1.0, depth1=0.6, depth32=0.8)
QSD_GOALS = Goals(dd=1.0, depth1=1.0, depth32=1.0)


@dataclass(frozen=True)
class Pair:
    """Two files (or devices) that hold the same data; with the PIDs of the processes that
    serve them, the rows include the CPU time those spend per request."""

    ours: str
    reference: str
    ours_pid: int | None = None
    reference_pid: int | None = None


def pair_row(opts: Options, pair: Pair, cpu_rows: list[Row] | None, test: str, unit: str,
             ours: Counted, reference: Counted, **how: Any) -> Row:
    """measure() one row; if CPU_ROWS is a list and PAIR has PIDs, the CPU time per request
    of both serving processes over the same runs goes there as a row of its own."""
    if cpu_rows is None or pair.ours_pid is None or pair.reference_pid is None:
        return measure(opts, test, unit, lambda: ours()[0], lambda: reference()[0], **how)
    meters = CpuMeter(pair.ours_pid), CpuMeter(pair.reference_pid)
    row = measure(opts, test, unit, meters[0].watch(ours), meters[1].watch(reference), **how)
    cpu_rows.append(cpu_row(f"CPU per request: {test}", *meters))
    return row


def file_rows(opts: Options, res: Resources, data: Data, pair: Pair, goals: Goals) -> list[Row]:
    """dd and fio on the two files of PAIR; the CPU rows (if PAIR has PIDs) come last, for
    the O_DIRECT dd rows (1 MiB requests) and the fio rows at depth 32 (4 KiB)."""
    count = opts.stream_bytes // MiB
    src = str(data.source)
    rows: list[Row] = []
    cpu: list[Row] = []
    for label, flags in (("dd read bs=1M, buffered", []),
                         ("dd read bs=1M, iflag=direct", ["iflag=direct"])):
        rows.append(pair_row(opts, pair, cpu if flags else None, label, "MiB/s",
                             partial(dd_counted, pair.ours, "/dev/null", count, flags),
                             partial(dd_counted, pair.reference, "/dev/null", count, flags),
                             cold=True, goal=goals.dd))
    for label, flags in (("dd write bs=1M, buffered, fsync", ["conv=notrunc,fsync"]),
                         ("dd write bs=1M, oflag=direct, fsync",
                          ["conv=notrunc,fsync", "oflag=direct"])):
        rows.append(pair_row(opts, pair, cpu if "oflag=direct" in flags else None, label,
                             "MiB/s", partial(dd_counted, src, pair.ours, count, flags),
                             partial(dd_counted, src, pair.reference, count, flags),
                             before=partial(warm, data.source), goal=goals.dd))
    out = res.workdir / "fio.json"
    for rw, depth in (("randread", 1), ("randread", 32), ("randwrite", 1), ("randwrite", 32)):
        job = (rw, 4 * KiB, depth, opts.seconds, out)
        rows.append(pair_row(opts, pair, cpu if depth == 32 else None,
                             f"fio {rw} 4 KiB, qd {depth}", "IOPS",
                             partial(fio_iops_counted, pair.ours, *job),
                             partial(fio_iops_counted, pair.reference, *job),
                             cold=rw == "randread",
                             goal=goals.depth1 if depth == 1 else goals.depth32))
    return rows + cpu


def fuse_memory_rows(pids: dict[str, int]) -> list[Row]:
    return [memory_row("peak RSS: blockbridge mount | nbdfuse", pids["mount"], pids["nbdfuse"]),
            memory_row("peak RSS: blockbridge-target | nbdkit", pids["target"], pids["nbdkit"])]


def section_fuse(opts: Options, res: Resources, data: Data) -> list[Row]:
    ours, reference, pids = fuse_pair(res, data)
    pair = Pair(str(ours), str(reference), pids["mount"], pids["nbdfuse"])
    return file_rows(opts, res, data, pair, NBDFUSE_GOALS) + fuse_memory_rows(pids)


def section_loop(opts: Options, res: Resources, data: Data) -> list[Row]:
    ours, reference, pids = fuse_pair(res, data)
    ours_dev, ours_dio = attach_loop(res, ours)
    ref_dev, ref_dio = attach_loop(res, reference)
    if not (ours_dio and ref_dio):
        say("  note: losetup could not turn direct I/O on for "
            f"{'' if ours_dio else 'blockbridge '}{'' if ref_dio else 'nbdfuse'}")
    rows = file_rows(opts, res, data, Pair(ours_dev, ref_dev), Goals())
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


def section_qsd(opts: Options, res: Resources, data: Data) -> list[Row]:
    portal, _ = start_tgtd(res, data.disk)
    mount_pid = mount_blockbridge(res, portal, res.workdir / "bb")
    export = res.workdir / "qsd-lun1"
    qsd_pid = start_qsd(res, portal, export)
    pair = Pair(str(res.workdir / "bb" / TGTD_IQN / "lun1"), str(export), mount_pid, qsd_pid)
    rows = file_rows(opts, res, data, pair, QSD_GOALS)
    return [*rows, memory_row("peak RSS: blockbridge mount | qemu-storage-daemon", mount_pid,
                              qsd_pid)]


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
    Section("qsd", "FUSE file of one tgtd LUN: blockbridge mount vs qemu-storage-daemon "
            "(libiscsi + its FUSE export)", "blockbridge", "qemu-storage-daemon",
            ("/dev/fuse", "fusermount3", "tgtd", "tgtadm", "qemu-storage-daemon", "dd", "fio"),
            section_qsd, root_for="tgtd", check=qsd_iscsi_missing),
    Section("unprivileged", "FUSE file of one blockbridge-target LUN: a normal user's "
            "blockbridge mount vs root's", "user", "root",
            ("/dev/fuse", "fusermount3", "setpriv", "fio"), section_unprivileged,
            root_for="mounting as another user", check=user_missing),
    Section("scaling", "blockbridge-target + blockbridge mount on a sparse LUN: 16 GiB "
            "compared with 1 GiB (must not grow)", "16 GiB", "1 GiB",
            ("/dev/fuse", "fusermount3", "dd"), section_scaling),
)

SECTIONS = tuple(s.name for s in SECTION_LIST)
