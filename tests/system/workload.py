"""Real workloads for the reliability tests: a file system on a loop device over a LUN file,
fio with checksum verification on it, and the kernel log of that loop device."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.interop.daemons import stop, wait_for_listening


def start_target(disk: Path, port: int, workdir: Path, iqn: str, n: int = 0,
                 size: str = "256M") -> subprocess.Popen[str]:
    """Our target in quick mode on a fixed port (so it can be restarted on the same one)."""
    log = workdir / f"target-{n}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "blockbridge_target", "--disk", str(disk), "--size", size,
             "--target-name", iqn, "--portal", f"127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT, text=True)
    wait_for_listening(log, proc, 20)
    return proc


def kill_hard(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def bb(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blockbridge", *args], capture_output=True,
                          text=True, timeout=timeout)


@contextlib.contextmanager
def mounted(portal: str, mnt: Path, *extra: str) -> Iterator[Path]:
    mnt.mkdir(exist_ok=True)
    r = bb("mount", portal, str(mnt), *extra)
    assert r.returncode == 0, r.stderr
    try:
        yield mnt
    finally:
        u = bb("umount", str(mnt))
        if mnt.is_mount():
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        assert u.returncode == 0, u.stderr


def kernel_log_lines() -> int:
    out = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


def kernel_errors(device: str, since: int) -> list[str]:
    """Kernel log lines after line ``since`` that report an error on ``device``."""
    name = Path(device).name
    bad = re.compile(rf"(I/O error.*\b{name}\b|\b{name}\b.*I/O error|"
                     rf"EXT4-fs (error|warning) \(device {name}\)|Buffer I/O error on dev {name})")
    out = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines()[since:] if bad.search(line)]


@dataclass
class LoopFS:
    device: str
    directory: Path


@contextlib.contextmanager
def loop_filesystem(lun: Path, directory: Path) -> Iterator[LoopFS]:
    """losetup (direct I/O) + mkfs.ext4 + mount on a LUN file; fsck'd after unmounting."""
    dev = subprocess.run(["losetup", "--find", "--show", "--direct-io=on", str(lun)],
                         capture_output=True, text=True, check=True).stdout.strip()
    directory.mkdir(exist_ok=True)
    mounted_fs = False
    try:
        subprocess.run(["mkfs.ext4", "-q", "-E", "nodiscard", dev], check=True)
        subprocess.run(["mount", dev, str(directory)], check=True)
        mounted_fs = True
        yield LoopFS(dev, directory)
        subprocess.run(["umount", str(directory)], check=True)
        mounted_fs = False
        fsck = subprocess.run(["e2fsck", "-f", "-n", dev], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    finally:
        if mounted_fs:
            subprocess.run(["umount", "-l", str(directory)], check=False)
        subprocess.run(["losetup", "-d", dev], check=False)


def filesystem_round_trip(lun: Path, workdir: Path) -> bytes:
    """losetup + mkfs.ext4 + mount + write + umount + mount + re-read (+ fsck) on a LUN."""
    data = os.urandom(5 << 20)
    with loop_filesystem(lun, workdir / "fs") as fs:
        (fs.directory / "data.bin").write_bytes(data)
        subprocess.run(["umount", str(fs.directory)], check=True)
        subprocess.run(["mount", fs.device, str(fs.directory)], check=True)
        assert (fs.directory / "data.bin").read_bytes() == data
    return data


def start_fio_verify(directory: Path, size: str, output: Path,
                     extra: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    """fio writing a checksummed pattern (crc32c in every block) and verifying it."""
    cmd = ["fio", "--name=verify", f"--directory={directory}", f"--size={size}",
           "--rw=randwrite", "--bsrange=4k-256k", "--ioengine=psync", "--direct=1",
           "--numjobs=2", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
           "--fsync=16", "--verify_state_save=0",  # no *-verify.state files in the cwd
           "--output-format=json", f"--output={output}", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def fio_result(proc: subprocess.Popen[str], output: Path, timeout: float) -> dict[str, int]:
    """Wait for fio; return the error count and bytes written and verified."""
    try:
        console, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise AssertionError("fio hung") from None
    assert proc.returncode == 0, f"fio failed ({proc.returncode}): {console}"
    report = json.loads(output.read_text())
    jobs = report["jobs"]
    return {"errors": sum(j["error"] for j in jobs),
            "written": sum(j["write"]["io_bytes"] for j in jobs),
            "verified": sum(j["read"]["io_bytes"] for j in jobs)}
