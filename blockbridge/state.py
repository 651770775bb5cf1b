"""Per-user state: the initiator name and the records of running mounts."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import warnings
from pathlib import Path
from typing import Any

import platformdirs


def config_dir() -> Path:
    return Path(platformdirs.user_config_dir("blockbridge"))


def log_file_for(mountpoint: str) -> Path:
    """Where a background mount logs unless told otherwise: the user's state directory
    (~/.local/state/blockbridge/log/), one file per mount point."""
    directory = Path(platformdirs.user_log_dir("blockbridge"))
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = mountpoint.strip("/").replace("/", "-") or "root"
    return directory / f"mount-{name}.log"


def runtime_dir() -> Path:
    with warnings.catch_warnings():  # no XDG_RUNTIME_DIR (root, cron): a /tmp fallback is fine
        warnings.simplefilter("ignore")
        path = Path(platformdirs.user_runtime_dir("blockbridge"))
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def initiator_name() -> str:
    """A stable initiator name for this user, created on first use (like open-iscsi's)."""
    path = config_dir() / "initiatorname"
    try:
        name = path.read_text().strip()
        if name:
            return name
    except FileNotFoundError:
        pass
    host = re.sub(r"[^a-z0-9.-]", "-", socket.gethostname().lower()) or "host"
    name = f"iqn.2026-11.local.blockbridge:{host}-{secrets.token_hex(3)}"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(name + "\n")
    return name


def record_path(pid: int) -> Path:
    return runtime_dir() / f"mount-{pid}.json"


def write_record(pid: int, record: dict[str, Any]) -> None:
    path = record_path(pid)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def remove_record(pid: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        record_path(pid).unlink()


def records() -> list[dict[str, Any]]:
    """Records of mounts whose daemon is still alive (stale ones are removed)."""
    out = []
    for path in sorted(runtime_dir().glob("mount-*.json")):
        try:
            rec = json.loads(path.read_text())
            os.kill(int(rec["pid"]), 0)
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        out.append(rec)
    return out
