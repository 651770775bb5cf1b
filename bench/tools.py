"""The load generators: iscsi-perf, qemu-img bench, dd and fio, each returning a figure."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import INITIATOR, BenchError, MiB
from bench.processes import run


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
    return dd_counted(source, dest, count, flags)[0]


def dd_counted(source: str, dest: str, count: int, flags: Sequence[str]) -> tuple[float, int]:
    """dd bs=1M; returns MiB/s and the number of 1 MiB requests it made."""
    cmd = ["dd", f"if={source}", f"of={dest}", "bs=1M", f"count={count}", *flags]
    err = run(cmd, timeout=1800).stderr
    m = re.search(r"^(\d+) bytes .* copied, ([0-9.e+-]+) s", err, re.MULTILINE)
    if not m:
        raise BenchError(f"dd gave no result: {err.strip()[-200:]}")
    moved = int(m[1])
    return moved / MiB / max(float(m[2]), 1e-6), -(-moved // MiB)


def fio(path: str, rw: str, block: int, depth: int, seconds: int, out: Path,
        prefix: Sequence[str] = ()) -> dict[str, Any]:
    """One fio job with libaio and O_DIRECT; returns the job's read or write statistics.
    PREFIX runs it through another command (as another user, say)."""
    escaped = path.replace(":", "\\:")  # fio splits file names at colons
    cmd = [*prefix, "fio", "--name=bench", f"--filename={escaped}", f"--rw={rw}", f"--bs={block}",
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


def fio_iops_counted(path: str, rw: str, block: int, depth: int, seconds: int,
                     out: Path, prefix: Sequence[str] = ()) -> tuple[float, int]:
    """IOPS and the number of requests the run completed."""
    stats = fio(path, rw, block, depth, seconds, out, prefix)
    return float(stats["iops"]), int(stats["total_ios"])


def fio_mib_s(path: str, rw: str, block: int, depth: int, seconds: int, out: Path) -> float:
    return float(fio(path, rw, block, depth, seconds, out)["bw_bytes"]) / MiB


def warm(path: Path) -> None:
    """Read a file once so that it comes from the page cache afterwards."""
    with path.open("rb") as f:
        while f.read(8 * MiB):
            pass


def qemu_iscsi_missing() -> str | None:
    """Why the target section cannot have write rows (qemu-img with libiscsi), or None."""
    if not shutil.which("qemu-img"):
        return "qemu-img is not installed"
    done = run(["qemu-img", "--help"], timeout=30, check=False)
    if not re.search(r"^Supported formats:.* iscsi\b", done.stdout, re.MULTILINE):
        return "qemu-img has no iscsi driver (Debian: qemu-block-extra)"
    return None



def qsd_iscsi_missing() -> str | None:
    """Why qemu-storage-daemon cannot open iscsi:// LUNs, or None: a block device on a port
    where nothing listens fails in the iscsi driver if it is there, before it if not."""
    done = run(["qemu-storage-daemon", "--blockdev", "driver=iscsi,transport=tcp,"
                "portal=127.0.0.1:1,target=iqn.2000-01.invalid:none,lun=0,node-name=probe"],
               timeout=30, check=False)
    if "iSCSI:" in done.stderr + done.stdout:
        return None
    return "qemu-storage-daemon has no iscsi driver (Debian: qemu-block-extra)"
