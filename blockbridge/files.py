"""Writing files that hold secrets or state: whole or not at all, private from the start.

A file is never opened where it will live: a planted symbolic link or an existing file
(with its mode and owner) would decide where the bytes go and who reads them.  The data
goes into a new file next to it, created exclusively with the final mode and without
following links, written in full and flushed to disk, then renamed over the old name
(which replaces a link there instead of following it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def write_file(path: Path, data: bytes, mode: int = 0o600, *, durable: bool = True) -> None:
    """Put ``data`` at ``path`` atomically, with permissions ``mode`` whatever the umask;
    ``durable``: on disk (file and directory flushed) before the call returns."""
    directory = path.parent
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        tmp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, flags, mode)
            break
        except FileExistsError:
            continue
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if not durable:
        return
    with contextlib.suppress(OSError):  # the rename itself, on disk
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
