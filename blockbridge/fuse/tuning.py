"""Per-connection FUSE limits the kernel keeps in /sys/fs/fuse/connections/N/.

Asynchronous I/O on a FUSE file (libaio, io_uring, a loop device with direct I/O) reaches
the daemon as "background" requests, and the kernel lets only ``max_background`` (12 by
default) of them be pending at once.  An iSCSI session keeps 32 or more commands in
flight, so the default leaves most of its queue empty.  pyfuse3 cannot pass the limit at
mount time; the kernel lets root raise it afterwards through the fusectl file system.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

CONNECTIONS = Path("/sys/fs/fuse/connections")
MAX_BACKGROUND = 64
CONGESTION_THRESHOLD = 48  # the kernel's default ratio, 3/4 of max_background


def connection_dir(dev: int, connections: Path = CONNECTIONS) -> Path:
    """The fusectl directory of the FUSE mount whose ``st_dev`` is ``dev``."""
    # FUSE superblocks get anonymous device numbers (major 0); fusectl names the
    # directory after the kernel's dev_t, which for major 0 is the minor number.
    return connections / str(os.minor(dev) if os.major(dev) == 0 else dev)


def raise_queue_limits(dev: int, connections: Path = CONNECTIONS) -> str:
    """Raise max_background and congestion_threshold of the mount whose ``st_dev`` is
    ``dev``.  Returns what was done, or why nothing could be (not root, fusectl not
    mounted); never raises.  (Takes the device number, not the mount point: a stat of
    one's own FUSE mount from the event loop would wait for itself.)"""
    try:
        conn = connection_dir(dev, connections)
        current = int((conn / "max_background").read_text())
        if current >= MAX_BACKGROUND:
            return f"FUSE max_background is {current}"
        # The threshold must stay below the maximum: raise the maximum first.
        (conn / "max_background").write_text(f"{MAX_BACKGROUND}\n")
        (conn / "congestion_threshold").write_text(f"{CONGESTION_THRESHOLD}\n")
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return f"FUSE max_background left at the kernel's default ({reason})"
    return f"FUSE max_background raised from {current} to {MAX_BACKGROUND}"
