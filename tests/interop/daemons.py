"""Start and stop real daemons for interop and system tests: our target, tgtd."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LISTENING = re.compile(r"listening on (?:\[(?P<h6>[^\]]+)\]|(?P<h4>[^\s:]+)):(?P<port>\d+)")


@dataclass
class RunningTarget:
    process: subprocess.Popen[str]
    host: str
    port: int
    log_path: Path

    @property
    def portal(self) -> str:
        return f"{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_for_listening(
    log_path: Path, process: subprocess.Popen[str], timeout: float
) -> tuple[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        if m := LISTENING.search(text):
            return m["h4"] or m["h6"], int(m["port"])
        if process.poll() is not None:
            raise RuntimeError(f"target exited with {process.returncode}:\n{text}")
        time.sleep(0.05)
    raise RuntimeError(f"target did not report listening within {timeout}s")


@contextlib.contextmanager
def our_target(args: list[str], workdir: Path, timeout: float = 20.0,
               nofile: int | None = None) -> Iterator[RunningTarget]:
    """Run ``python -m blockbridge_target ARGS`` until the block ends, then SIGTERM it;
    ``nofile``: with that limit on open files (soft and hard)."""
    log_path = workdir / f"target-{os.getpid()}-{time.monotonic_ns()}.log"

    def limit() -> None:
        import resource

        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "blockbridge_target", *args],
            stdout=log, stderr=subprocess.STDOUT, text=True, cwd=workdir,
            preexec_fn=limit if nofile is not None else None,
        )
    try:
        host, port = wait_for_listening(log_path, proc, timeout)
        yield RunningTarget(proc, host, port, log_path)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[str], timeout: float = 15.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def have(*tools: str) -> bool:
    return all(shutil.which(t) for t in tools)


@dataclass
class RunningTgtd:
    process: subprocess.Popen[bytes]
    port: int
    control: int

    @property
    def portal(self) -> str:
        return f"127.0.0.1:{self.port}"

    def adm(self, *args: str) -> None:
        subprocess.run(["tgtadm", "-C", str(self.control), "--lld", "iscsi", *args],
                       check=True, capture_output=True, timeout=10)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def tgtd(targets: dict[str, list[Path]], *, thin: bool = True) -> Iterator[RunningTgtd]:
    """tgtd on a free port with the given targets; LUNs numbered from 1 (LUN 0 is tgtd's
    controller)."""
    port = free_port()
    control = 1000 + port % 20000
    proc = subprocess.Popen(["tgtd", "-f", "-C", str(control), "--iscsi",
                             f"portal=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    running = RunningTgtd(proc, port, control)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                running.adm("--op", "show", "--mode", "target")
                break
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        for tid, (name, files) in enumerate(targets.items(), 1):
            running.adm("--op", "new", "--mode", "target", "--tid", str(tid), "-T", name)
            for lun, path in enumerate(files, 1):
                running.adm("--op", "new", "--mode", "logicalunit", "--tid", str(tid),
                            "--lun", str(lun), "-b", str(path))
                if thin:
                    running.adm("--op", "update", "--mode", "logicalunit", "--tid", str(tid),
                                "--lun", str(lun), "--params", "thin_provisioning=1")
            running.adm("--op", "bind", "--mode", "target", "--tid", str(tid), "-I", "ALL")
        yield running
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()  # tgtd ignores SIGTERM while targets are configured
            proc.wait()
