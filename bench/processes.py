"""Starting, waiting for and stopping processes, and what /proc says of them."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.common import CHILD_CWD, BenchError, Options, say


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop_pid(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM a process that is not our child, then SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if wait_gone(pid, timeout):
            return
    say(f"warning: process {pid} did not exit")


def stop_child(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue
    say(f"warning: process {proc.pid} did not exit")


def run(cmd: Sequence[str], timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion; on timeout or Ctrl-C subprocess.run kills it by PID."""
    try:
        done = subprocess.run(list(cmd), capture_output=True, encoding="utf-8",
                              errors="replace", timeout=timeout, stdin=subprocess.DEVNULL,
                              start_new_session=True, cwd=CHILD_CWD)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(cmd)} did not finish within {timeout:.0f} s") from None
    if check and done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise BenchError(f"{' '.join(cmd)} exited with {done.returncode}: " + " | ".join(tail))
    return done


def quietly(action: Callable[..., object], *args: Any) -> None:
    """Run a cleanup step; a failing step is reported and does not stop the others."""
    try:
        action(*args)
    except Exception as exc:
        say(f"warning: cleanup step {getattr(action, '__name__', action)} failed: {exc}")


class Resources(contextlib.ExitStack):
    """What one section starts; closing it undoes everything in reverse order."""

    def __init__(self, workdir: Path) -> None:
        super().__init__()
        self.workdir = workdir

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def spawn(self, name: str, cmd: Sequence[str],
              stop_timeout: float = 15.0) -> subprocess.Popen[bytes]:
        with self.log_path(name).open("ab") as log:
            proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=CHILD_CWD)
        self.callback(quietly, stop_child, proc, stop_timeout)
        return proc

    def defer(self, action: Callable[..., object], *args: Any) -> None:
        self.callback(quietly, action, *args)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], what: str, timeout: float,
               proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not ready within {timeout:.0f} s")
        time.sleep(0.05)


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set size) of a running process, in MiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
    if not m:
        raise BenchError(f"no VmHWM in /proc/{pid}/status")
    return int(m[1]) / 1024


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a running process, all its threads, in seconds (the
    kernel counts it in clock ticks, 10 ms on most machines)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def mounted_under(root: Path) -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(root) or point.startswith(f"{root}/"):
            points.append(point)
    return points


def drop_caches(opts: Options) -> None:
    if opts.drop_caches:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
