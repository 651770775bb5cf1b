"""The daemons and mounts a section compares: ours, tgtd, nbdkit, nbdfuse, loop devices."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.common import INITIATOR, OUR_IQN, QSD_INITIATOR, TGTD_IQN, BenchError
from bench.processes import (
    Resources,
    free_port,
    mounted_under,
    run,
    stop_child,
    stop_pid,
    wait_until,
)

LISTENING = re.compile(r"listening on (?:\[[^\]]+\]|[^\s:]+):(\d+)")


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


def qsd_mounted(export: Path) -> bool:
    return str(export) in mounted_under(export.parent)


def unmount_qsd(export: Path, proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM makes qemu-storage-daemon remove its export, which unmounts it."""
    stop_child(proc)
    if qsd_mounted(export):
        run(["fusermount3", "-u", "-z", str(export)], timeout=30, check=False)


def start_qsd(res: Resources, portal: str, export: Path) -> int:
    """qemu-storage-daemon with LUN 1 of TGTD_IQN at PORTAL (its libiscsi driver, no host
    cache) exported writable over FUSE on the regular file EXPORT; returns its PID."""
    export.touch()
    pidfile = res.workdir / "qsd.pid"  # written once the export is mounted
    blockdev = ("driver=iscsi,transport=tcp,"
                f"portal={portal},target={TGTD_IQN},lun=1,initiator-name={QSD_INITIATOR},"
                "node-name=lun,cache.direct=on")
    proc = res.spawn("qemu-storage-daemon", [
        "qemu-storage-daemon", "--blockdev", blockdev, "--export",
        f"type=fuse,id=exp,node-name=lun,mountpoint={export},writable=on",
        "--pidfile", str(pidfile)])
    res.defer(unmount_qsd, export, proc)
    wait_until(lambda: pidfile.exists() and qsd_mounted(export), "qemu-storage-daemon", 30,
               proc)
    return proc.pid


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

