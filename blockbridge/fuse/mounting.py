"""Mounting a FUSE file system, and unmounting it, without libfuse.

A normal user cannot call mount(2): ``fusermount3`` (setuid root) mounts for them and hands
the /dev/fuse descriptor back over a socket pair, one of whose ends it finds in the
``_FUSE_COMMFD`` environment variable (SCM_RIGHTS, with one byte of data).  We always ask
for ``auto_unmount``: fusermount3 then stays, watching its end of the socket, and unmounts
when ours closes.

Root mounts with mount(2) itself (``fd=N,rootmode=...,user_id=...,group_id=...``).  Every
mount also gets a small watchdog process of ours (``python -m blockbridge.fuse.mounting``)
that holds a pipe from the mount process and, when the pipe closes, unmounts if the mount
is still the one we made (same mount ID): root detaches it, a user runs ``fusermount3 -u
-z`` (fusermount3's own auto_unmount was seen to leave a user's mount in place).  So a
mount process that dies leaves no dead mount point behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .tuning import _unescape

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_SYNCHRONOUS, MS_DIRSYNC, MS_NOATIME = 16, 128, 1024
MNT_DETACH = 2
FLAGS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
         "sync": MS_SYNCHRONOUS, "dirsync": MS_DIRSYNC, "noatime": MS_NOATIME}
CLEARS = {"rw": MS_RDONLY, "suid": MS_NOSUID, "dev": MS_NODEV, "exec": MS_NOEXEC,
          "async": MS_SYNCHRONOUS, "atime": MS_NOATIME}
KERNEL_OPTIONS = ("default_permissions", "allow_other")
KERNEL_VALUES = ("max_read=",)
FUSERMOUNT = "fusermount3"


class MountFailed(Exception):
    """The mount could not be made: one line saying why."""


@dataclass
class Mounted:
    """A mount we made: its /dev/fuse descriptor and what guards it."""

    fd: int
    mountpoint: str
    mount_id: int | None
    fstype: str
    # (process, our end of its socket or pipe): fusermount3, our watchdog; closing our
    # end makes the guard unmount and exit
    guards: list[tuple[subprocess.Popen[bytes], socket.socket | int]] = \
        field(default_factory=list)

    def still_mounted(self) -> bool:
        return self.mount_id is not None and mount_id(self.mountpoint, self.fstype) == \
            self.mount_id


def mount_id(mountpoint: str, fstype: str, mountinfo: Path = Path("/proc/self/mountinfo")
             ) -> int | None:
    """The ID of the newest mount of ``fstype`` on ``mountpoint``, None if there is none."""
    found = None
    with contextlib.suppress(OSError):
        for line in mountinfo.read_text().splitlines():
            fields = line.split(" ")
            if "-" not in fields[6:]:
                continue
            kind = fields[fields.index("-", 6) + 1]
            if _unescape(fields[4]) == mountpoint and kind == fstype:
                found = int(fields[0])
    return found


def mount(mountpoint: str, options: list[str], fsname: str, subtype: str = "blockbridge"
          ) -> Mounted:
    """Mount on ``mountpoint`` (absolute) with FUSE ``options`` (ro, allow_other,
    default_permissions...): through mount(2) as root, else through fusermount3."""
    if os.geteuid() == 0:
        return _mount_syscall(mountpoint, options, fsname, subtype)
    return _mount_fusermount(mountpoint, options, fsname, subtype)


def _mount_fusermount(mountpoint: str, options: list[str], fsname: str, subtype: str
                      ) -> Mounted:
    opts = ",".join([f"fsname={fsname}", f"subtype={subtype}", *options, "auto_unmount"])
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with tempfile.TemporaryFile() as errors:
        try:
            guard = subprocess.Popen(
                [FUSERMOUNT, "-o", opts, "--", mountpoint], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=errors, pass_fds=(theirs.fileno(),),
                env={**os.environ, "_FUSE_COMMFD": str(theirs.fileno())})
        except OSError as exc:
            ours.close()
            raise MountFailed(f"cannot run {FUSERMOUNT}: {exc.strerror} (install fuse3)"
                              ) from None
        finally:
            theirs.close()
        try:
            _, fds, _, _ = socket.recv_fds(ours, 1, 1)
        except OSError:
            fds = []
        if not fds:
            ours.close()
            guard.wait()
            errors.seek(0)
            said = errors.read().decode(errors="replace").strip().splitlines()
            why = said[-1].removeprefix(f"{FUSERMOUNT}: ") if said else \
                f"{FUSERMOUNT} exited with status {guard.returncode}"
            raise MountFailed(why)
    fd = fds[0]
    os.set_inheritable(fd, False)
    fstype = f"fuse.{subtype}"
    m = Mounted(fd, mountpoint, mount_id(mountpoint, fstype), fstype, [(guard, ours)])
    _watchdog(m)
    return m


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _mount_syscall(mountpoint: str, options: list[str], fsname: str, subtype: str
                   ) -> Mounted:
    flags = MS_NOSUID | MS_NODEV
    kernel: list[str] = []
    for o in options:
        if o in FLAGS:
            flags |= FLAGS[o]
        elif o in CLEARS:
            flags &= ~CLEARS[o]
        elif o in KERNEL_OPTIONS or o.startswith(KERNEL_VALUES):
            kernel.append(o)
        else:
            raise MountFailed(f"unknown FUSE mount option {o}")
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise MountFailed(f"cannot open /dev/fuse: {exc.strerror}") from None
    root = stat.S_IFMT(os.stat(mountpoint).st_mode)
    data = ",".join([f"fd={fd}", f"rootmode={root:o}", f"user_id={os.getuid()}",
                     f"group_id={os.getgid()}", *kernel])
    fstype = f"fuse.{subtype}"
    if _libc().mount(fsname.encode(), mountpoint.encode(), fstype.encode(), flags,
                     data.encode()) != 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise MountFailed(f"mount(2) on {mountpoint} failed: {os.strerror(err)}")
    m = Mounted(fd, mountpoint, mount_id(mountpoint, fstype), fstype)
    _watchdog(m)
    return m


def _watchdog(m: Mounted) -> None:
    """Start the watchdog of ``m`` (without one, a dead mount point could stay)."""
    read_end, write_end = os.pipe()
    try:
        guard = subprocess.Popen(
            [sys.executable, "-m", "blockbridge.fuse.mounting", m.mountpoint, m.fstype,
             str(m.mount_id)], stdin=read_end, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        os.close(write_end)
        return
    finally:
        os.close(read_end)
    m.guards.append((guard, write_end))


def detach(mountpoint: str) -> None:
    """umount2(MNT_DETACH): root's lazy unmount."""
    if _libc().umount2(mountpoint.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, os.strerror(err), mountpoint)


def unmount(m: Mounted, timeout: float = 10) -> None:
    """Unmount (lazily: files still open keep the connection until they close, or until
    the descriptor is closed, which aborts it) and let the guard go."""
    guards, m.guards = m.guards, []
    for _, link in guards:  # closing our end is what makes a guard unmount, then exit
        if isinstance(link, socket.socket):
            link.close()
        else:
            os.close(link)
    for guard, _ in guards:
        try:
            guard.wait(timeout)
        except subprocess.TimeoutExpired:
            guard.kill()
            guard.wait()
    if m.still_mounted():
        if os.geteuid() == 0:
            detach(m.mountpoint)
        else:
            subprocess.run([FUSERMOUNT, "-u", "-q", "-z", "--", m.mountpoint],
                           stdin=subprocess.DEVNULL, capture_output=True, check=False)


def close(m: Mounted) -> None:
    """Close the descriptor: a connection still in use (lazily unmounted) is aborted."""
    fd, m.fd = m.fd, -1
    if fd >= 0:
        os.close(fd)


def watch(mountpoint: str, fstype: str, ident: int | None) -> None:
    """The watchdog of a root mount: wait for standard input to close (the mount process
    ended, whichever way), then detach the mount if it is still ours."""
    with contextlib.suppress(OSError):
        while os.read(0, 4096):
            pass
    if ident is None or mount_id(mountpoint, fstype) != ident:
        return
    if os.geteuid() == 0:
        detach(mountpoint)
    else:
        subprocess.run([FUSERMOUNT, "-u", "-q", "-z", "--", mountpoint],
                       stdin=subprocess.DEVNULL, capture_output=True, check=False)


if __name__ == "__main__":
    point, kind, number = sys.argv[1:4]
    watch(point, kind, None if number == "None" else int(number))
