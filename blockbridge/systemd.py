"""sd_notify(3) without libsystemd: readiness and status for Type=notify services."""

from __future__ import annotations

import os
import socket


def notify(*states: str) -> bool:
    """Send state lines (``READY=1``, ``STATUS=...``) to $NOTIFY_SOCKET; False if not set."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
        except OSError:
            return False
    return True
