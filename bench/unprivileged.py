"""The unprivileged section: a normal user's `blockbridge mount` against root's.

Both mount the same blockbridge-target at the same time; the user's mount goes through
fusermount3 (as every mount by a normal user does), root's through mount(2).  A mount
without ``allow_other`` is open to its owner only, so fio on the user's file runs as that
user too.  The user is ``nobody``: the run needs no account of its own, and the code the
children import (the snapshot on PYTHONPATH, the interpreter's environment) is readable
by everyone.
"""

from __future__ import annotations

import os
import pwd
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import INITIATOR, OUR_IQN, KiB, Options, say
from bench.measure import Row
from bench.peers import (
    blockbridge_cmd,
    find_mount_daemon,
    mount_blockbridge,
    start_our_target,
    unmount_blockbridge,
)
from bench.processes import Resources, run
from bench.tools import fio_iops_counted

if TYPE_CHECKING:
    from bench.sections import Data

USER = "nobody"
GOAL = 0.9  # the user's mount / root's, 4 KiB random read at depth 32


def user_missing() -> str | None:
    """Why the section cannot run here (beyond root and its tools), or None."""
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"there is no user {USER!r} to mount as"
    try:
        mode = os.stat("/dev/fuse").st_mode
    except OSError as exc:
        return f"/dev/fuse: {exc.strerror}"
    if mode & 0o006 != 0o006:  # fusermount3 opens it as the user
        return (f"/dev/fuse is not open to every user (mode {mode & 0o777:o}; "
                "distributions make it 666)")
    return None


class User:
    """Runs commands as USER, with a home of its own under the work directory."""

    def __init__(self, top: Path, workdir: Path) -> None:
        entry = pwd.getpwnam(USER)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        # the user must reach its directory (and the code snapshot) through the work
        # directories, which mkdtemp made private: others may pass, not list
        directory = workdir
        while True:
            directory.chmod(0o711)
            if directory == top or directory == directory.parent:
                break
            directory = directory.parent
        self.home = workdir / "user-home"
        self.home.mkdir()
        os.chown(self.home, self.uid, self.gid)

    def prefix(self) -> list[str]:
        env = [f"HOME={self.home}", f"PATH={os.environ.get('PATH', '/usr/bin:/bin')}"]
        if "PYTHONPATH" in os.environ:
            env.append(f"PYTHONPATH={os.environ['PYTHONPATH']}")
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                "env", "-i", *env]

    def mount(self, res: Resources, portal: str, mnt: Path) -> int:
        """`blockbridge mount` as the user; returns the PID of the mount process."""
        mnt.mkdir()
        os.chown(mnt, self.uid, self.gid)
        res.defer(unmount_blockbridge, mnt)  # root's way, if the user's left it mounted
        res.defer(self.unmount, mnt)
        log = self.home / "mount.log"
        run([*self.prefix(), *blockbridge_cmd("mount", portal, str(mnt), "--initiator-name",
                                              f"{INITIATOR}.user", "--log-file", str(log))],
            timeout=120)
        return find_mount_daemon(mnt)

    def unmount(self, mnt: Path) -> None:
        run([*self.prefix(), *blockbridge_cmd("umount", str(mnt))], timeout=90, check=False)


def fio_as(prefix: list[str], path: str, out: Path, opts: Options) -> tuple[float, int]:
    return fio_iops_counted(path, "randread", 4 * KiB, 32, opts.seconds, out, prefix=prefix)


def section_unprivileged(opts: Options, res: Resources, data: Data) -> list[Row]:
    from bench.sections import Pair, pair_row  # the sections module imports this one

    portal, _ = start_our_target(res, data.disk)
    user = User(opts.workdir, res.workdir)
    root_mnt = res.workdir / "root-mnt"
    root_pid = mount_blockbridge(res, portal, root_mnt)
    user_mnt = res.workdir / "user-mnt"
    user_pid = user.mount(res, portal, user_mnt)
    lun = Path(OUR_IQN) / "lun0"
    fusectl = os.path.ismount("/sys/fs/fuse/connections")
    say(f"  fusectl is {'mounted' if fusectl else 'not mounted'}; Python {sys.version.split()[0]}")
    pair = Pair(str(user_mnt / lun), str(root_mnt / lun), user_pid, root_pid)
    cpu: list[Row] = []
    row = pair_row(opts, pair, cpu, "fio randread 4 KiB, qd 32", "IOPS",
                   partial(fio_as, user.prefix(), pair.ours, user.home / "fio.json", opts),
                   partial(fio_as, [], pair.reference, res.workdir / "fio.json", opts),
                   cold=True, goal=GOAL)
    return [row, *cpu]

