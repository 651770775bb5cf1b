"""The control socket of a mount: one JSON request per connection, one JSON answer.

Requests: {"op": "discard", "path": "<target>/lun<N>", "offset": N, "length": N}
          {"op": "rescan"}: read every target's LUN list and LUN sizes again
          {"op": "status"}
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from .initiator.blockdev import BlockDevice
from .initiator.errors import InitiatorError

log = logging.getLogger(__name__)


Devices = Callable[[], list[tuple[str, BlockDevice]]]
Snapshot = Callable[[], dict[str, Any]]
Rescan = Callable[[], Awaitable[list[str]]]


async def serve_control(path: Path, devices: Devices, snapshot: Snapshot,
                        rescan: Rescan | None = None,
                        *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                        ) -> None:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if path.exists():
        path.unlink()
    await sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(8)
    listener = trio.SocketListener(sock)
    task_status.started()
    try:
        async with trio.open_nursery() as nursery:
            while True:
                stream = await listener.accept()
                nursery.start_soon(_handle, stream, devices, snapshot, rescan)
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


async def _handle(stream: trio.SocketStream, devices: Devices, snapshot: Snapshot,
                  rescan: Rescan | None) -> None:
    async with stream:
        raw = b""
        with trio.move_on_after(5):
            while not raw.endswith(b"\n") and len(raw) < 4096:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                raw += chunk
        try:
            req = json.loads(raw or b"{}")
            if req.get("op") == "status":
                answer = {"ok": True, "status": snapshot()}
            elif req.get("op") == "rescan" and rescan is not None:
                answer = {"ok": True, "changes": await rescan()}
            else:
                answer = await _dispatch(req, dict(devices()))
        except (ValueError, KeyError, TypeError) as exc:
            answer = {"ok": False, "error": f"bad request: {exc}"}
        except InitiatorError as exc:
            answer = {"ok": False, "error": str(exc)}
        await stream.send_all(json.dumps(answer).encode() + b"\n")


async def _dispatch(req: dict[str, Any], devices: dict[str, BlockDevice]) -> dict[str, Any]:
    if req.get("op") == "discard":
        dev = devices.get(req["path"])
        if dev is None:
            return {"ok": False, "error": f"no LUN {req['path']} in this mount"}
        offset = int(req.get("offset", 0))
        length = int(req.get("length", dev.size - offset))
        if offset < 0 or length < 0 or offset + length > dev.size:
            return {"ok": False, "error": "range outside the LUN"}
        if not dev.can_unmap:
            return {"ok": False, "error": "the target does not support UNMAP on this LUN"}
        await dev.discard(offset, length)
        return {"ok": True, "discarded": length}
    return {"ok": False, "error": f"unknown operation {req.get('op')!r}"}


def request(path: Path, req: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(req).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    result: dict[str, Any] = json.loads(data)
    return result
