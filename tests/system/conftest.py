"""Fixtures of the system tests: a normal user with their own installation of blockbridge."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.needs import require

from .desktop import (
    DesktopUser,
    build_wheelhouse,
    create_user,
    fuse_device_open_to_users,
    install,
    remove_user,
)

CHECKOUT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def desktop_user() -> Iterator[DesktopUser]:
    """A new user (removed with their home afterwards) who installed blockbridge as
    README.md tells one to, from wheels root built of this checkout (no network)."""
    require("root", "/dev/fuse", "useradd", "userdel", "runuser", "fusermount3",
            "system-python")
    shared = Path(tempfile.mkdtemp(prefix="bb-wheels-"))  # root's tmp_path is private
    try:
        shared.chmod(0o755)
        build_wheelhouse(CHECKOUT, shared / "wheels")
        user = create_user(f"bbdesk{os.getpid() % 100000}")
        try:
            with fuse_device_open_to_users():
                install(user, shared / "wheels")
                yield user
        finally:
            remove_user(user)
    finally:
        shutil.rmtree(shared)


ENGINES = ("blockbridge", "pyfuse3")


@pytest.fixture(params=ENGINES)
def fuse_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with each FUSE engine: `blockbridge mount` (run as a child process of
    the test) takes its default from BLOCKBRIDGE_FUSE_ENGINE."""
    name: str = request.param
    monkeypatch.setenv("BLOCKBRIDGE_FUSE_ENGINE", name)
    return name
