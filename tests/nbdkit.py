"""nbdkit as a peer: an NBD export on a Unix socket, for the target's Type=nbd backend."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.needs import require


@dataclass(frozen=True)
class Export:
    uri: str
    pid: int


@contextlib.contextmanager
def nbdkit(where: Path, plugin: str, *args: str) -> Iterator[Export]:
    """Run ``nbdkit PLUGIN ARGS`` serving on a socket in ``where``: its URI and PID."""
    require("nbdkit", "libnbd-python")
    sock = where / f"nbdkit-{plugin}.sock"
    # The socket exists from bind(), before nbdkit listens; the PID file is written once
    # it accepts connections.
    ready = where / f"nbdkit-{plugin}.pid"
    proc = subprocess.Popen(["nbdkit", "--exit-with-parent", "-f", "-U", str(sock),
                             "-P", str(ready), plugin, *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not ready.exists() or not ready.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"nbdkit {plugin} did not start: {err}")
            time.sleep(0.02)
        yield Export(f"nbd+unix:///?socket={sock}", proc.pid)
    finally:
        if proc.poll() is None:  # (a test may have killed it)
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
