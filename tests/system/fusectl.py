"""The two states of the fusectl file system a mount can meet: mounted (where it already
is, or on a directory of the test's) and not mounted (in a private mount namespace of the
test's, whatever the machine has), and how to wait for `blockbridge status` to report
what the mount made of it."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from blockbridge.fuse.tuning import NOT_MOUNTED, fusectl_mounts, mounts
from tests.interop.daemons import stop
from tests.needs import require

UNMOUNTED_STATUS = f"FUSE max_background not raised: {NOT_MOUNTED}"
UNMOUNTED_LOG = f"FUSE max_background left at the kernel's default: {NOT_MOUNTED}"


@contextlib.contextmanager
def fusectl_mounted() -> Iterator[Path]:
    """fusectl where every user can reach it: where it is already mounted, else on a new
    directory under /tmp (mode 755), unmounted and removed when the block ends."""
    present = fusectl_mounts()
    if present:
        yield present[0]
        return
    require("root")
    directory = Path(tempfile.mkdtemp(prefix="bb-fusectl-"))
    try:
        directory.chmod(0o755)
        subprocess.run(["mount", "-t", "fusectl", "none", str(directory)], check=True)
        try:
            yield directory
        finally:
            subprocess.run(["umount", str(directory)], check=True)
    finally:
        directory.rmdir()


@dataclass
class Namespace:
    """A private mount namespace, kept by a sleeping process; or, with no holder, the
    test's own namespace (where fusectl is not mounted in the first place)."""

    holder: subprocess.Popen[str] | None

    @property
    def prefix(self) -> list[str]:
        """Put before a command to run it in the namespace (use absolute paths)."""
        if self.holder is None:
            return []
        return ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", "--"]

    @property
    def mountinfo(self) -> Path:
        pid = "self" if self.holder is None else self.holder.pid
        return Path(f"/proc/{pid}/mountinfo")

    def is_mount(self, path: Path) -> bool:
        return any(point == path for point, _ in mounts(self.mountinfo))


@contextlib.contextmanager
def without_fusectl() -> Iterator[Namespace]:
    """A mount namespace in which fusectl is not mounted: the test's own where the machine
    has none (a fresh machine, a chroot), else a private one whose mounts vanish with it
    when the block ends."""
    present = fusectl_mounts()
    if not present:
        yield Namespace(None)
        return
    require("root", "unshare", "nsenter")
    script = 'for m; do umount "$m" || exit 1; done; echo ready; exec sleep 3600'
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         *map(str, present)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "ready\n", "cannot make a namespace without fusectl"
        ns = Namespace(holder)
        assert fusectl_mounts(ns.mountinfo) == []
        yield ns
    finally:
        stop(holder)


def wait_for_queue_line(status: Callable[[], str], timeout: float = 15) -> str:
    """The FUSE line of `blockbridge status`: the mount reports it just after mounting."""
    deadline = time.monotonic() + timeout
    while True:
        out = status()
        lines = [line.strip() for line in out.splitlines()
                 if line.strip().startswith("FUSE max_background")]
        if lines or time.monotonic() > deadline:
            assert len(lines) == 1, f"no single FUSE line in:\n{out}"
            return lines[0]
        time.sleep(0.1)

