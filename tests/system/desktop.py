"""A normal user of this machine, with blockbridge installed the way README.md's "Install
for one user" tells one to: a virtual environment of the system's Python under
~/.local/share/blockbridge, its programs linked into ~/.local/bin.

The user runs every command through ``runuser`` with a clean environment (HOME, PATH,
XDG_RUNTIME_DIR as a login would set them) and their home as working directory, so
nothing of root's (the test's Python, its environment, its files) helps them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from blockbridge.fuse.tuning import mounts

from .fusectl import Namespace

SYSTEM_PYTHON = "/usr/bin/python3"

# README.md's "Install for one user", word for word, as the user types it; SOURCE is
# ./blockbridge there (a checkout), and here wheels built from this checkout.
INSTALL = (
    "python3 -m venv ~/.local/share/blockbridge/venv",
    "~/.local/share/blockbridge/venv/bin/pip install SOURCE",
    "mkdir -p ~/.local/bin",
    "ln -s ~/.local/share/blockbridge/venv/bin/blockbridge* ~/.local/bin/",
)
README_SOURCE = "./blockbridge"


def build_wheelhouse(checkout: Path, wheelhouse: Path) -> None:
    """Wheels of the package and every dependency, readable by every user, so that the
    user's pip needs no network."""
    wheelhouse.mkdir(mode=0o755)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheelhouse),
                    str(checkout)], check=True, capture_output=True, timeout=600)
    for wheel in wheelhouse.iterdir():
        wheel.chmod(0o644)


@dataclass
class DesktopUser:
    name: str
    uid: int
    home: Path

    @property
    def runtime_dir(self) -> Path:
        return Path(f"/run/user/{self.uid}")  # what systemd-logind gives a session

    @property
    def venv(self) -> Path:
        return self.home / ".local/share/blockbridge/venv"

    @property
    def env(self) -> dict[str, str]:
        return {"HOME": str(self.home), "USER": self.name, "LOGNAME": self.name,
                "SHELL": "/bin/sh", "LANG": "C.UTF-8",
                "PATH": f"{self.home}/.local/bin:/usr/local/bin:/usr/bin:/bin",
                "XDG_RUNTIME_DIR": str(self.runtime_dir)}

    def command(self, *argv: str) -> list[str]:
        return ["runuser", "-u", self.name, "--", "env", "-i",
                *(f"{k}={v}" for k, v in self.env.items()), *argv]

    def run(self, *argv: str, prefix: Sequence[str] = (), timeout: float = 120,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([*prefix, *self.command(*argv)], cwd=self.home, input=stdin,
                           capture_output=True, timeout=timeout)
        return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(),
                                           r.stderr.decode())

    def output(self, *argv: str, timeout: float = 120) -> bytes:
        """The standard output of a command that must succeed, as bytes."""
        r = subprocess.run(self.command(*argv), cwd=self.home, capture_output=True,
                           timeout=timeout)
        assert r.returncode == 0, r.stderr.decode()
        return r.stdout

    def sh(self, script: str, prefix: Sequence[str] = (), timeout: float = 120
           ) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-c", script, prefix=prefix, timeout=timeout)

    def bb(self, *args: str, prefix: Sequence[str] = (), timeout: float = 120
           ) -> subprocess.CompletedProcess[str]:
        return self.run("blockbridge", *args, prefix=prefix, timeout=timeout)

    def is_mount(self, path: Path, ns: Namespace | None = None) -> bool:
        # root's stat of another user's FUSE mount fails (EACCES): ask the mount table
        return any(point == path for point, _ in mounts(ns.mountinfo if ns else None))

    @contextlib.contextmanager
    def mounted(self, portal: str, mnt: Path, *extra: str, ns: Namespace | None = None
                ) -> Iterator[Path]:
        """`blockbridge mount` by the user on MNT (made by them) until the block ends,
        then `blockbridge umount`, which must succeed; in NS if given."""
        prefix = ns.prefix if ns else []
        made = self.run("mkdir", "-p", str(mnt))
        assert made.returncode == 0, made.stderr
        r = self.bb("mount", portal, str(mnt), *extra, prefix=prefix)
        assert r.returncode == 0, r.stderr
        try:
            yield mnt
        finally:
            u = self.bb("umount", str(mnt), prefix=prefix)
            if self.is_mount(mnt, ns):
                self.run("fusermount3", "-u", "-z", str(mnt), prefix=prefix)
            assert u.returncode == 0, u.stderr

    def processes(self) -> list[int]:
        """The PIDs of this user's processes still running."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if entry.stat().st_uid == self.uid:
                        pids.append(int(entry.name))
        return pids


def create_user(name: str) -> DesktopUser:
    subprocess.run(["useradd", "--create-home", "--user-group", "--shell", "/bin/sh", name],
                   check=True, capture_output=True, timeout=60)
    entry = pwd.getpwnam(name)
    user = DesktopUser(name, entry.pw_uid, Path(entry.pw_dir))
    user.runtime_dir.mkdir(mode=0o700, parents=True)
    os.chown(user.runtime_dir, entry.pw_uid, entry.pw_gid)
    return user


def remove_user(user: DesktopUser) -> None:
    """Stop what the user left running (a mount a failed test did not unmount), lazily
    unmount what is left in their home, then userdel -r."""
    for point, fstype in mounts():
        if point.is_relative_to(user.home) and fstype.startswith("fuse"):
            subprocess.run(["umount", "-l", str(point)], check=False)
    for pid in user.processes():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while user.processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    subprocess.run(["userdel", "--remove", user.name], check=True, capture_output=True,
                   timeout=60)
    shutil.rmtree(user.runtime_dir, ignore_errors=True)


def install(user: DesktopUser, wheelhouse: Path) -> None:
    source = f"--no-index --find-links {wheelhouse} blockbridge"
    for step in INSTALL:
        r = user.sh(step.replace("SOURCE", source), timeout=600)
        assert r.returncode == 0, f"{step}: {r.stdout}{r.stderr}"


@contextlib.contextmanager
def fuse_conf(text: str) -> Iterator[None]:
    """/etc/fuse.conf with TEXT until the block ends, then exactly as it was (or absent)."""
    path = Path("/etc/fuse.conf")
    try:
        before: bytes | None = path.read_bytes()
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        before, mode = None, 0o644
    try:
        path.write_text(text)
        path.chmod(0o644)
        yield
    finally:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(before)
            path.chmod(mode)


@contextlib.contextmanager
def fuse_device_open_to_users() -> Iterator[None]:
    """/dev/fuse mode 0666, as udev makes it on a desktop (a container's /dev may have
    0600, which stops every user's mount before fusermount3); as it was afterwards."""
    mode = os.stat("/dev/fuse").st_mode & 0o7777
    if mode & 0o006 == 0o006:
        yield
        return
    os.chmod("/dev/fuse", 0o666)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", mode)
