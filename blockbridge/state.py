"""Per-user state: the initiator name and the records of running mounts."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any

import platformdirs

from .files import write_file


class RuntimeDirError(Exception):
    """The runtime directory cannot be used safely; the message names the fix."""


def config_dir() -> Path:
    return Path(platformdirs.user_config_dir("blockbridge"))


def log_file_for(mountpoint: str) -> Path:
    """Where a background mount logs unless told otherwise: the user's state directory
    (~/.local/state/blockbridge/log/), one file per mount point."""
    directory = Path(platformdirs.user_log_dir("blockbridge"))
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = mountpoint.strip("/").replace("/", "-") or "root"
    return directory / f"mount-{name}.log"


SESSION_RUNTIME_DIR = "/run/user/{uid}"  # what systemd-logind makes for a session
PRIVATE_DIR_FIX = "set XDG_RUNTIME_DIR to a directory of yours with mode 0700"


def _check_private(path: Path, fix: str, *, ours: bool = False) -> None:
    """A directory we own that no one else may enter, and not a link, or an error.
    ``ours``: a directory blockbridge creates, which older versions made 0755; one that
    only we could write to is made 0700."""
    me = os.geteuid()
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise RuntimeDirError(f"runtime directory {path} is not safe to use: "
                              f"{exc.strerror}; {fix}") from None
    if stat.S_ISLNK(st.st_mode):
        problem = "it is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "it is not a directory"
    elif st.st_uid != me:
        problem = f"it belongs to uid {st.st_uid}, not to you (uid {me})"
    elif st.st_mode & 0o077 and ours and not st.st_mode & 0o022:
        os.chmod(path, 0o700)
        return
    elif st.st_mode & 0o077:
        problem = f"its mode is {stat.S_IMODE(st.st_mode):04o}, not 0700"
        fix = f"run chmod 700 {path}"
    else:
        return
    raise RuntimeDirError(f"runtime directory {path} is not safe to use: {problem}; {fix}")


def runtime_dir() -> Path:
    """<runtime directory>/blockbridge, for mount records and control sockets: the
    runtime directory is $XDG_RUNTIME_DIR, else /run/user/<uid>, else
    <tmp>/runtime-<uid>. Each must be ours, mode 0700 and no link (another user could
    create <tmp>/runtime-<uid> first); otherwise RuntimeDirError, before anything is
    mounted."""
    uid = os.geteuid()
    env = os.environ.get("XDG_RUNTIME_DIR", "")
    fallback = False  # the session's directory, not one of ours
    if os.path.isabs(env):
        base = Path(env)
    elif os.path.isdir(SESSION_RUNTIME_DIR.format(uid=uid)):
        base = Path(SESSION_RUNTIME_DIR.format(uid=uid))
    else:
        base, fallback = Path(tempfile.gettempdir()) / f"runtime-{uid}", True
        with contextlib.suppress(FileExistsError, FileNotFoundError):
            base.mkdir(mode=0o700)
    _check_private(base, f"remove it, or {PRIVATE_DIR_FIX}" if fallback else PRIVATE_DIR_FIX,
                   ours=fallback)
    path = base / "blockbridge"
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise RuntimeDirError(f"cannot create {path}: {exc.strerror}") from None
    _check_private(path, f"remove it, or {PRIVATE_DIR_FIX}", ours=True)
    return path


def initiator_name_path() -> Path:
    return config_dir() / "initiatorname"


def initiator_name() -> str:
    """A stable initiator name for this user, created on first use (like open-iscsi's)."""
    path = initiator_name_path()
    try:
        name = path.read_text().strip()
        if name:
            return name
    except FileNotFoundError:
        pass
    host = re.sub(r"[^a-z0-9.-]", "-", socket.gethostname().lower()) or "host"
    name = f"iqn.2026-11.local.blockbridge:{host}-{secrets.token_hex(3)}"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_file(path, f"{name}\n".encode(), 0o644)
    return name


def record_path(pid: int) -> Path:
    return runtime_dir() / f"mount-{pid}.json"


def write_record(pid: int, record: dict[str, Any]) -> None:
    # rewritten every 2 s, gone at reboot: no need to wait for the disk
    write_file(record_path(pid), json.dumps(record, indent=1).encode(), 0o600, durable=False)


def remove_record(pid: int) -> None:
    with contextlib.suppress(OSError, RuntimeDirError):
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
