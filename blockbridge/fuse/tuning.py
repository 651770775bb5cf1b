"""Per-connection FUSE limits the kernel keeps in the fusectl file system.

Asynchronous I/O on a FUSE file (libaio, io_uring, a loop device with direct I/O) reaches
the daemon as "background" requests, and the kernel lets only ``max_background`` (12 by
default) of them be pending at once.  An iSCSI session keeps 32 or more commands in
flight, so the default leaves most of its queue empty.  pyfuse3 cannot pass the limit at
mount time; it can be raised afterwards through fusectl, usually mounted on
/sys/fs/fuse/connections, where each connection has a directory owned by the user who
mounted it.  So a normal user can raise the limit of their own mount too, up to
/sys/module/fuse/parameters/max_user_bgreq; only mounting fusectl needs root.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CONNECTIONS = Path("/sys/fs/fuse/connections")
MOUNTINFO = Path("/proc/self/mountinfo")
USER_LIMITS = Path("/sys/module/fuse/parameters")
MAX_BACKGROUND = 64
CONGESTION_THRESHOLD = 48  # the kernel's default ratio, 3/4 of max_background

NOT_MOUNTED = ("fusectl is not mounted, so loop devices and io_uring on the LUN files get "
               "fewer requests in flight (fix, as root: mount -t fusectl none "
               f"{CONNECTIONS})")


@dataclass(frozen=True)
class Tuning:
    """What became of the limit: the value in force (None when fusectl could not be
    read), the value before, and why it was not raised (None when it was, or already
    was high enough)."""

    max_background: int | None
    before: int | None = None
    reason: str | None = None

    def log_line(self) -> str:
        if self.reason is not None:
            at = "the kernel's default" if self.max_background is None else self.max_background
            return f"FUSE max_background left at {at}: {self.reason}"
        if self.before is not None and self.before != self.max_background:
            return f"FUSE max_background raised from {self.before} to {self.max_background}"
        return f"FUSE max_background is {self.max_background}"

    def status(self) -> dict[str, int | str | None]:
        """The part of a mount's status record, shown by ``blockbridge status``."""
        return {"max_background": self.max_background, "reason": self.reason}


def _unescape(field: str) -> str:
    """A path of /proc/self/mountinfo: space, tab, newline and backslash are octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def mounts(mountinfo: Path | None = None) -> list[tuple[Path, str]]:
    """(mount point, file system type) of every mount in /proc/self/mountinfo (or the
    given file), in mount order; empty when it cannot be read."""
    try:
        lines = (mountinfo or MOUNTINFO).read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split(" ")
        # ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        if "-" not in fields[6:-1]:
            continue
        found.append((Path(_unescape(fields[4])), fields[fields.index("-", 6) + 1]))
    return found


def fusectl_mounts(mountinfo: Path | None = None) -> list[Path]:
    """Where fusectl is mounted in this mount namespace, in mount order."""
    return [point for point, fstype in mounts(mountinfo) if fstype == "fusectl"]


def find_connections(mountinfo: Path | None = None) -> Path | None:
    """The fusectl directory to use: the usual place if fusectl is mounted there, else
    wherever it is mounted, else None."""
    mounts = fusectl_mounts(mountinfo)
    if CONNECTIONS in mounts:
        return CONNECTIONS
    return mounts[0] if mounts else None


def connection_dir(dev: int, connections: Path = CONNECTIONS) -> Path:
    """The fusectl directory of the FUSE mount whose ``st_dev`` is ``dev``."""
    # FUSE superblocks get anonymous device numbers (major 0); fusectl names the
    # directory after the kernel's dev_t, which for major 0 is the minor number.
    return connections / str(os.minor(dev) if os.major(dev) == 0 else dev)


def _user_limit(name: str, wanted: int, limits: Path) -> int:
    """The kernel refuses (EINVAL) a value above max_user_bgreq / max_user_congthresh
    from a process without CAP_SYS_ADMIN: ask for at most that."""
    if os.geteuid() == 0:
        return wanted
    try:
        return min(wanted, int((limits / name).read_text()))
    except (OSError, ValueError):
        return wanted


def raise_queue_limits(dev: int, connections: Path | None = None,
                       limits: Path = USER_LIMITS) -> Tuning:
    """Raise max_background and congestion_threshold of the mount whose ``st_dev`` is
    ``dev``, through fusectl at ``connections`` (found in /proc/self/mountinfo when not
    given).  Never raises: the result says what was done, or why nothing could be.
    (Takes the device number, not the mount point: a stat of one's own FUSE mount from
    the event loop would wait for itself.)"""
    if connections is None:
        connections = find_connections()
        if connections is None:
            return Tuning(None, reason=NOT_MOUNTED)
    conn = connection_dir(dev, connections)
    current: int | None = None
    now: int | None = None
    try:
        current = now = int((conn / "max_background").read_text())
        wanted = _user_limit("max_user_bgreq", MAX_BACKGROUND, limits)
        if current >= wanted:
            return Tuning(current, current)
        threshold = _user_limit("max_user_congthresh", CONGESTION_THRESHOLD, limits)
        # The threshold must stay below the maximum: raise the maximum first.
        (conn / "max_background").write_text(f"{wanted}\n")
        now = wanted
        (conn / "congestion_threshold").write_text(f"{min(threshold, wanted)}\n")
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return Tuning(now, current, f"{reason} ({conn})")
    return Tuning(now, current)
