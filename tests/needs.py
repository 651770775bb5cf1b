"""What a test needs from the machine, and what happens when it is not there.

``@needs("tgtd", "mkfs.ext4")`` marks a test (or ``pytestmark`` a module). Before the test
runs, each need is checked. On a developer's machine a missing one skips the test with its
reason. Under ``CI=true`` it fails instead, naming the Debian package that provides it:
``scripts/bootstrap`` installs every one of them, so a missing tool there is a defect of
the set-up, not a reason to pass quietly.

Needs are program names looked up on PATH, or one of the names in ``SPECIAL``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# program -> the Debian package that installs it (scripts/bootstrap's list)
PACKAGES: dict[str, str] = {
    "tgtd": "tgt", "tgtadm": "tgt",
    "istgt": "istgt",
    "iscsi-ls": "libiscsi-bin", "iscsi-inq": "libiscsi-bin", "iscsi-test-cu": "libiscsi-bin",
    "iscsi-perf": "libiscsi-bin", "iscsi-readcapacity16": "libiscsi-bin",
    "qemu-img": "qemu-utils", "qemu-storage-daemon": "qemu-system-common",
    "nbdkit": "nbdkit", "nbdfuse": "libnbd-bin",
    "fio": "fio",
    "mkfs.ext4": "e2fsprogs", "e2fsck": "e2fsprogs", "debugfs": "e2fsprogs",
    "losetup": "util-linux", "blkdiscard": "util-linux", "fstrim": "util-linux",
    "dmesg": "util-linux", "unshare": "util-linux", "setpriv": "util-linux",
    "nsenter": "util-linux",
    "fusermount3": "fuse3",
    "stunnel4": "stunnel4",
    "systemd-analyze": "systemd", "systemd-sysusers": "systemd",
    "useradd": "passwd", "userdel": "passwd", "runuser": "util-linux",
    "ip": "iproute2",
    "argparse-manpage": "pip package argparse-manpage, one of the test extras",
}


def _qemu_iscsi() -> bool:
    """qemu's iscsi:// driver is a loadable module of its own package."""
    return any(Path(d, "block-iscsi.so").exists()
               for d in ("/usr/lib/x86_64-linux-gnu/qemu", "/usr/lib/aarch64-linux-gnu/qemu",
                         "/usr/lib/qemu", "/usr/lib64/qemu"))


def _system_python_venv() -> bool:
    """Debian's own Python with venv: what README.md's install for one user uses."""
    try:
        r = subprocess.run(["/usr/bin/python3", "-c", "import ensurepip, venv"],
                           capture_output=True, timeout=30)
    except OSError:
        return False
    return r.returncode == 0


def _libnbd_python() -> bool:
    """libnbd's Python binding, importable here (a venv made with --system-site-packages)."""
    try:
        import nbd  # noqa: F401
    except ImportError:
        return False
    return True


# name -> (check, what to do when it fails)
SPECIAL: dict[str, tuple[Callable[[], bool], str]] = {
    "root": (lambda: os.geteuid() == 0, "needs root (run the suite as root)"),
    "/dev/fuse": (lambda: os.path.exists("/dev/fuse"),
                  "needs /dev/fuse (Debian package fuse3; modprobe fuse)"),
    "qemu-iscsi": (_qemu_iscsi, "needs qemu's iscsi driver (Debian package qemu-block-extra)"),
    "libnbd-python": (_libnbd_python, "needs libnbd's Python binding (Debian package "
                      "python3-libnbd, and a venv with --system-site-packages: scripts/bootstrap)"),
    "system-python": (_system_python_venv, "needs /usr/bin/python3 with venv (Debian packages "
                      "python3 and python3-venv)"),
}


VENV_BIN = str(Path(sys.executable).parent)  # the test extras' programs


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(*wanted: str) -> list[str]:
    """The reasons, one per missing need, in the order asked."""
    reasons: list[str] = []
    for name in wanted:
        if name in SPECIAL:
            check, reason = SPECIAL[name]
            if not check():
                reasons.append(reason)
        elif shutil.which(name) is None and shutil.which(name, path=VENV_BIN) is None:
            package = PACKAGES.get(name)
            where = package if " " in (package or "") else f"Debian package {package}"
            reasons.append(f"needs {name} ({where})" if package else f"needs {name}")
    return reasons


def needs(*wanted: str) -> pytest.MarkDecorator:
    """Mark a test as needing these programs or SPECIAL names."""
    return pytest.mark.needs(*wanted)


def require_in_ci(reason: str) -> None:
    """Skip with REASON, or fail with it under CI=true (for needs found out at run time)."""
    if in_ci():
        pytest.fail(f"{reason}: scripts/bootstrap should have installed it", pytrace=False)
    pytest.skip(reason)


def require(*wanted: str) -> None:
    """The same check from inside a test or fixture: skip here, fail under CI=true."""
    reasons = missing(*wanted)
    if not reasons:
        return
    require_in_ci("; ".join(reasons))
