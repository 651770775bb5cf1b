"""Files holding secrets or state: written whole, private from the start, never through a
planted link (the key pair of --generate-cert, mount records, the runtime directory)."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from blockbridge import state
from blockbridge.files import write_file
from blockbridge.tls import generate_self_signed

OTHER_UID = 65534  # nobody


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_generate_cert_replaces_a_planted_link_and_an_open_file(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "tls"
    out.mkdir()
    (out / "blockbridge.key").symlink_to(victim)  # planted: the key would go there
    (out / "blockbridge.crt").write_text("old")
    (out / "blockbridge.crt").chmod(0o666)
    old = os.umask(0o077)  # the modes are the ones asked for, whatever the umask
    try:
        crt, key, _fp = generate_self_signed(out, "localhost")
    finally:
        os.umask(old)
    assert victim.read_text() == "precious\n"
    assert not key.is_symlink() and mode(key) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert mode(crt) == 0o644 and crt.read_bytes().startswith(b"-----BEGIN CERTIFICATE")
    assert sorted(p.name for p in out.iterdir()) == ["blockbridge.crt", "blockbridge.key"]
    # a key that was world-readable is replaced by a private one
    key.chmod(0o644)
    generate_self_signed(out, "localhost")
    assert mode(key) == 0o600


def test_write_file_leaves_nothing_behind_on_failure(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        write_file(tmp_path / "dir", b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["dir"]


def test_records_are_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    state.write_record(os.getpid(), {"pid": os.getpid()})
    assert mode(state.record_path(os.getpid())) == 0o600
    assert mode(run / "blockbridge") == 0o700
    assert [r["pid"] for r in state.records()] == [os.getpid()]
    state.remove_record(os.getpid())


@pytest.fixture
def fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No XDG_RUNTIME_DIR and no /run/user/<uid>: <tmp>/runtime-<uid>."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(state, "SESSION_RUNTIME_DIR", str(tmp_path / "none-{uid}"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path / f"runtime-{os.geteuid()}"


def test_the_fallback_runtime_directory_is_made_private(fallback: Path) -> None:
    assert state.runtime_dir() == fallback / "blockbridge"
    assert mode(fallback) == mode(fallback / "blockbridge") == 0o700
    fallback.chmod(0o755)  # made by an older version: only we could write to it
    state.runtime_dir()
    assert mode(fallback) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_runtime_directory_of_another_user_is_refused(fallback: Path) -> None:
    fallback.mkdir(mode=0o777)
    os.chown(fallback, OTHER_UID, OTHER_UID)
    with pytest.raises(state.RuntimeDirError) as info:
        state.runtime_dir()
    assert str(info.value) == (
        f"runtime directory {fallback} is not safe to use: it belongs to uid {OTHER_UID}, "
        f"not to you (uid {os.geteuid()}); remove it, or set XDG_RUNTIME_DIR to a directory "
        "of yours with mode 0700")
    assert not (fallback / "blockbridge").exists()


def test_a_link_or_an_open_runtime_directory_is_refused(
        fallback: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    fallback.symlink_to(elsewhere)
    with pytest.raises(state.RuntimeDirError, match="it is a symbolic link; remove it"):
        state.runtime_dir()
    fallback.unlink()
    fallback.mkdir()
    fallback.chmod(0o777)  # others could have planted anything in it
    with pytest.raises(state.RuntimeDirError,
                       match=f"its mode is 0777, not 0700; run chmod 700 {fallback}"):
        state.runtime_dir()
    session = tmp_path / "session"
    session.mkdir(mode=0o750)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(session))
    with pytest.raises(state.RuntimeDirError, match="its mode is 0750, not 0700"):
        state.runtime_dir()
