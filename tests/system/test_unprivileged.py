"""A normal user, not root, mounts a remote disk: the mission of blockbridge, tested.

The user (created for the test session, removed after) installs blockbridge the way
README.md tells one to, into their own virtual environment of the system's Python, and
runs every command with a clean environment.  Root only runs the target (on 127.0.0.1),
edits /etc/fuse.conf for the allow_other test, mounts or hides fusectl, and uses the
user's allow_other mount with losetup and mkfs.  Any step of the user's that needed root
would fail here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockbridge.fuse.tuning import CONGESTION_THRESHOLD, MAX_BACKGROUND, connection_dir
from tests.interop.daemons import RunningTarget, our_target
from tests.needs import needs, require

from .desktop import INSTALL, README_SOURCE, DesktopUser, fuse_conf
from .fusectl import (
    UNMOUNTED_LOG,
    UNMOUNTED_STATUS,
    fusectl_mounted,
    wait_for_queue_line,
    without_fusectl,
)
from .workload import filesystem_round_trip

README = Path(__file__).resolve().parents[2] / "README.md"
IQN = "iqn.2026-11.test:desktop"
SIZE = 64 << 20
ALLOW_OTHER_REFUSED = ("blockbridge: -o allow_other needs 'user_allow_other' in "
                       "/etc/fuse.conf (ask your administrator to add it)\n")

system = pytest.mark.system

# Run by the user with the system's Python: write at an offset, fsync, drop the cached
# pages, read back.
WRITE_FSYNC_READ = r"""
import os, sys
path, offset = sys.argv[1], int(sys.argv[2])
data = sys.stdin.buffer.read()
fd = os.open(path, os.O_RDWR)
try:
    assert os.pwrite(fd, data, offset) == len(data)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    back = os.pread(fd, len(data), offset)
finally:
    os.close(fd)
print("same" if back == data else "different")
"""


@pytest.fixture
def target(tmp_path: Path) -> Iterator[RunningTarget]:
    """Our target, run by root, serving tmp_path/disk.img."""
    args = ["--disk", str(tmp_path / "disk.img"), "--size", str(SIZE), "--target-name",
            IQN, "--portal", "127.0.0.1:0"]
    with our_target(args, tmp_path) as t:
        yield t


def status_of(user: DesktopUser) -> str:
    r = user.bb("status")
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_readme_tells_the_install_the_tests_do() -> None:
    text = README.read_text()
    section = text[text.index("## Install for one user"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    lines = [line for block in blocks for line in block.splitlines()]
    for step in INSTALL:
        assert step.replace("SOURCE", README_SOURCE) in lines, step
    apt = next(line for line in lines if line.startswith("sudo apt install "))
    bootstrap = (README.parent / "scripts" / "bootstrap").read_text()
    for package in apt.split()[3:]:  # what the administrator installs, the suite does too
        assert re.search(rf"(?<![\w-]){re.escape(package)}(?![\w-])", bootstrap), package


@system
def test_the_user_runs_their_own_installation(desktop_user: DesktopUser) -> None:
    u = desktop_user
    r = u.sh("command -v blockbridge; command -v blockbridge-target")
    assert r.stdout.split() == [f"{u.home}/.local/bin/blockbridge",
                                f"{u.home}/.local/bin/blockbridge-target"], r.stderr
    assert "home = /usr/bin" in (u.venv / "pyvenv.cfg").read_text()
    where = u.run(str(u.venv / "bin/python"), "-c",
                  "import blockbridge; print(blockbridge.__file__)")
    assert where.stdout.startswith(f"{u.venv}/lib/"), where.stderr
    assert u.bb("--help").returncode == 0


@system
def test_a_user_discovers_mounts_writes_reads_and_unmounts(
        desktop_user: DesktopUser, target: RunningTarget, tmp_path: Path, fuse_engine: str
) -> None:
    u = desktop_user
    found = u.bb("discover", target.portal)
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines() == [f"{target.portal},1 {IQN}"]
    mnt = u.home / "luns"
    engine = ("--fuse-engine", fuse_engine)
    with u.mounted(target.portal, mnt, *engine):
        lun = mnt / IQN / "lun0"
        assert u.run("stat", "-c", "%s %u %a", str(lun)).stdout.split() == \
            [str(SIZE), str(u.uid), "600"]
        offset, payload = 5 << 20, os.urandom(3 << 20)
        r = u.run("python3", "-c", WRITE_FSYNC_READ, str(lun), str(offset), stdin=payload)
        assert (r.returncode, r.stdout.strip()) == (0, "same"), r.stderr
        # after fsync the data is on the target's disk
        with (tmp_path / "disk.img").open("rb") as disk:
            disk.seek(offset)
            assert disk.read(len(payload)) == payload

        status = status_of(u)
        assert f"{mnt}  (portal {target.portal}, pid " in status
        assert f"session {IQN}: connected" in status
        assert re.search(rf"{re.escape(IQN)}/lun0: {SIZE} bytes .* writes \d+ "
                         rf"\({len(payload)} B\)  flushes [1-9]\d*  errors 0", status), status
        # the mount process is the user's, without any capability; root, not allowed
        # in (no allow_other), cannot open the user's files
        pid = int(re.search(r"pid (\d+)\)", status)[1])  # type: ignore[index]
        proc = Path(f"/proc/{pid}/status").read_text()
        uids = re.search(r"^Uid:\s+(.*)$", proc, re.M)[1].split()  # type: ignore[index]
        assert uids == [str(u.uid)] * 4
        assert re.search(r"^CapEff:\s+0+$", proc, re.M), proc
        with pytest.raises(PermissionError):
            os.open(lun, os.O_RDONLY)
    assert not u.is_mount(mnt)
    assert not Path(f"/proc/{pid}").exists()
    assert status_of(u).strip() == "no blockbridge mounts"
    # read back through a new mount: from the target, not from a cache
    with u.mounted(target.portal, mnt, *engine):
        back = u.output("dd", f"if={mnt / IQN / 'lun0'}", "bs=1M", "skip=5", "count=3",
                        "iflag=direct", "status=none")
    assert back == payload


@system
@needs("losetup", "mkfs.ext4", "e2fsck", "debugfs")
def test_allow_other_needs_user_allow_other_then_root_puts_a_file_system_on_it(
        desktop_user: DesktopUser, target: RunningTarget, tmp_path: Path, fuse_engine: str
) -> None:
    u = desktop_user
    mnt = u.home / "shared"
    assert u.run("mkdir", "-p", str(mnt)).returncode == 0
    with fuse_conf("# user_allow_other\nmount_max = 1000\n"):
        refused = u.bb("mount", "-o", "allow_other", target.portal, str(mnt))
    assert refused.returncode == 1
    assert refused.stderr == ALLOW_OTHER_REFUSED
    assert not u.is_mount(mnt)

    with fuse_conf("user_allow_other\n"), \
            u.mounted(target.portal, mnt, "-o", "allow_other", "--fuse-engine", fuse_engine):
        lun = mnt / IQN / "lun0"
        assert lun.stat().st_uid == u.uid  # root sees the user's mount
        data = filesystem_round_trip(lun, tmp_path)  # losetup, mkfs.ext4, mount, fsck
        status = status_of(u)
        assert "errors 0" in status and "session " + IQN + ": connected" in status
    out = subprocess.run(["debugfs", "-R", "cat /data.bin", str(tmp_path / "disk.img")],
                         capture_output=True, check=True)
    assert out.stdout == data


def user_limit() -> int:
    """What the kernel lets a user without CAP_SYS_ADMIN set max_background to."""
    try:
        limit = int(Path("/sys/module/fuse/parameters/max_user_bgreq").read_text())
    except (OSError, ValueError):
        return MAX_BACKGROUND
    return min(MAX_BACKGROUND, limit)


@system
def test_the_users_mount_raises_its_queue_limit_through_fusectl(
        desktop_user: DesktopUser, target: RunningTarget) -> None:
    u = desktop_user
    with fusectl_mounted() as connections, \
            u.mounted(target.portal, u.home / "q", "--fuse-engine", "pyfuse3") as mnt:
        line = wait_for_queue_line(lambda: status_of(u))
        dev = int(u.run("stat", "-c", "%d", str(mnt)).stdout)
        conn = connection_dir(dev, connections)
        assert conn.stat().st_uid == u.uid  # the kernel gives the files to the user
        assert line == f"FUSE max_background {user_limit()}"
        assert (conn / "max_background").read_text().strip() == str(user_limit())
        assert int((conn / "congestion_threshold").read_text()) == \
            min(CONGESTION_THRESHOLD, user_limit())


@system
def test_the_user_is_told_when_fusectl_is_not_mounted(
        desktop_user: DesktopUser, target: RunningTarget) -> None:
    require("unshare", "nsenter")
    u = desktop_user
    mnt = u.home / "without-fusectl"
    with without_fusectl() as ns, \
            u.mounted(target.portal, mnt, "--fuse-engine", "pyfuse3", ns=ns):
        # in a namespace of its own (where the machine has fusectl) or in the machine's
        assert u.is_mount(mnt, ns) and (ns.holder is None or not u.is_mount(mnt))
        line = wait_for_queue_line(lambda: status_of(u))
        status = status_of(u)
        # the mount works all the same, with the kernel's queue limit
        head = u.run("head", "-c", "4096", str(mnt / IQN / "lun0"), prefix=ns.prefix)
        assert (head.returncode, head.stdout) == (0, "\0" * 4096), head.stderr
        log = Path(re.search(r"^  log (\S+)$", status, re.M)[1])  # type: ignore[index]
    assert line == UNMOUNTED_STATUS
    text = log.read_text()
    assert text.count(UNMOUNTED_LOG) == 1, text
    assert log.stat().st_uid == u.uid


OTHER_UID = 65534  # nobody: another local user


@system
@needs("/dev/fuse")
def test_another_users_runtime_directory_stops_the_mount_before_it_is_made(
        desktop_user: DesktopUser, target: RunningTarget) -> None:
    """Without XDG_RUNTIME_DIR and /run/user/<uid> (cron, su, ssh without logind) the
    runtime directory is <tmp>/runtime-<uid>, a name any user can take first.  (A
    temporary directory of the test's, shared like /tmp: other tests on the machine may
    use /tmp/runtime-<uid>.)"""
    u = desktop_user
    session = u.runtime_dir.rename(u.runtime_dir.with_name(f"{u.uid}.aside"))
    shared = Path(tempfile.mkdtemp(prefix="blockbridge-shared-tmp-"))
    shared.chmod(0o1777)
    planted = shared / f"runtime-{u.uid}"
    planted.mkdir(mode=0o777)
    os.chown(planted, OTHER_UID, OTHER_UID)
    mnt = u.home / "planted"
    try:
        assert u.run("mkdir", "-p", str(mnt)).returncode == 0
        expected = (f"blockbridge: runtime directory {planted} is not safe to use: it belongs "
                    f"to uid {OTHER_UID}, not to you (uid {u.uid}); remove it, or set "
                    "XDG_RUNTIME_DIR to a directory of yours with mode 0700\n")
        no_session = ("env", "-u", "XDG_RUNTIME_DIR", f"TMPDIR={shared}", "blockbridge")
        for command in (("mount", target.portal, str(mnt)), ("status",), ("umount", str(mnt))):
            r = u.run(*no_session, *command)
            assert (r.returncode, r.stderr) == (1, expected), r.stderr
        assert not u.is_mount(mnt)
        assert not any(planted.iterdir())  # nothing of the user's went there
        assert "logged in" not in target.log()  # and the target saw no login
    finally:
        if u.is_mount(mnt):
            u.run("fusermount3", "-u", "-z", str(mnt))
        shutil.rmtree(shared)
        session.rename(u.runtime_dir)


@system
def test_the_users_own_engine_asks_for_its_queue_limit_at_init(
        desktop_user: DesktopUser, target: RunningTarget) -> None:
    """Our engine needs no fusectl: the limit is part of the INIT reply, within the
    module's max_user_bgreq, which the kernel applies to a user's mount."""
    require("unshare", "nsenter")
    u = desktop_user
    mnt = u.home / "init-limits"
    with without_fusectl() as ns, \
            u.mounted(target.portal, mnt, "--fuse-engine", "blockbridge", ns=ns):
        line = wait_for_queue_line(lambda: status_of(u))
        status = status_of(u)
        head = u.run("head", "-c", "4096", str(mnt / IQN / "lun0"), prefix=ns.prefix)
        assert (head.returncode, head.stdout) == (0, "\0" * 4096), head.stderr
    assert line == f"FUSE max_background {user_limit()}"
    assert "FUSE engine blockbridge: protocol 7." in status


@system
def test_a_users_killed_mount_process_leaves_no_dead_mount_point(
        desktop_user: DesktopUser, target: RunningTarget) -> None:
    u = desktop_user
    mnt = u.home / "killed"
    assert u.run("mkdir", "-p", str(mnt)).returncode == 0
    r = u.bb("mount", "--fuse-engine", "blockbridge", target.portal, str(mnt))
    assert r.returncode == 0, r.stderr
    try:
        pid = int(re.search(r"pid (\d+)\)", status_of(u))[1])  # type: ignore[index]
        os.kill(pid, 9)
        deadline = time.monotonic() + 10
        while u.is_mount(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not u.is_mount(mnt)  # fusermount3 (auto_unmount) unmounted it
        assert u.run("ls", str(mnt)).returncode == 0
    finally:
        if u.is_mount(mnt):
            u.run("fusermount3", "-u", "-z", str(mnt))
