"""`blockbridge cp`: copy a disk image onto a LUN file (or any file), with progress.

Holes in the source are not read: the matching range of the destination is written with
zeros, which the initiator turns into UNMAP on thin LUNs, so a sparse image stays sparse
on the target and the copy takes the time of its data, not of its size.  The copy ends
with fsync (SYNCHRONIZE CACHE), so when it returns the data is on the target's disk.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO

CHUNK = 4 << 20


class CopyError(Exception):
    """A copy that cannot start or finish; the message says why."""


@dataclass
class Progress:
    total: int
    done: int = 0
    zeroed: int = 0
    started: float = 0.0

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-6)
        rate = self.done / elapsed
        pct = 100 * self.done / self.total if self.total else 100.0
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        return (f"{_size(self.done)} of {_size(self.total)} ({pct:.0f}%), "
                f"{_size(int(rate))}/s, {_duration(left)} left")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def extents(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """(offset, length, is_data) runs of a file; all data where SEEK_HOLE is unsupported."""
    offset = 0
    while offset < size:
        try:
            data = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # a hole up to the end
                yield offset, size - offset, False
                return
            yield offset, size - offset, True
            return
        if data > offset:
            yield offset, min(data, size) - offset, False
            offset = min(data, size)
            continue
        hole = min(os.lseek(fd, offset, os.SEEK_HOLE), size)
        yield offset, hole - offset, True
        offset = hole


def copy_image(source: str, dest: str, *, report: Callable[[Progress], None] | None = None,
               every: float = 0.5) -> Progress:
    """Copy ``source`` onto the start of ``dest`` (which must be at least as large)."""
    try:
        src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CopyError(f"cannot open {source}: {exc.strerror}") from None
    try:
        try:
            dst = os.open(dest, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise CopyError(f"cannot open {dest}: {exc.strerror}") from None
        try:
            return _copy(src, dst, source, dest, report, every)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy(src: int, dst: int, source: str, dest: str,
          report: Callable[[Progress], None] | None, every: float) -> Progress:
    size = os.fstat(src).st_size
    room = os.lseek(dst, 0, os.SEEK_END)
    if room < size:
        raise CopyError(f"{source} ({size} bytes) does not fit on {dest} ({room} bytes)")
    progress = Progress(size, started=time.monotonic())
    buf = bytearray(CHUNK)
    zeros = bytes(CHUNK)
    last = 0.0
    for offset, length, is_data in extents(src, size):
        end = offset + length
        while offset < end:
            n = min(CHUNK, end - offset)
            if is_data:
                view = memoryview(buf)[:n]
                got = os.preadv(src, [view], offset)
                if got < n:
                    view[got:] = zeros[: n - got]  # the file shrank under us: zeros
                chunk: bytes | memoryview = view
            else:
                chunk = memoryview(zeros)[:n]
                progress.zeroed += n
            done = 0
            while done < n:
                done += os.pwritev(dst, [chunk[done:]], offset + done)
            offset += n
            progress.done += n
            now = time.monotonic()
            if report is not None and now - last >= every:
                report(progress)
                last = now
    os.fsync(dst)
    return progress


def run(source: str, dest: str, quiet: bool, out: TextIO = sys.stderr) -> int:
    tty = out.isatty() and not quiet

    def show(p: Progress) -> None:
        out.write(f"\r\x1b[K{p.line(time.monotonic())}")
        out.flush()

    try:
        p = copy_image(source, dest, report=show if tty else None)
    except KeyboardInterrupt:
        if tty:
            out.write("\n")
        out.write(f"blockbridge: copy interrupted; {dest} holds part of {source}\n")
        return 130
    if tty:
        out.write("\r\x1b[K")
    if not quiet:
        elapsed = max(time.monotonic() - p.started, 1e-6)
        out.write(f"copied {_size(p.done)} to {dest} in {elapsed:.1f} s "
                  f"({_size(p.done / elapsed)}/s; {_size(p.zeroed)} of holes sent as zeros)\n")
    return 0
