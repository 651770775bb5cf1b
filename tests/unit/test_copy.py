"""blockbridge cp: holes become zeros on the destination, progress, clear errors."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blockbridge.copy import CopyError, Progress, copy_image, extents


def sparse_image(path: Path) -> bytes:
    """8 MiB with data at 1 MiB and at the last 100 bytes, holes elsewhere."""
    with path.open("wb") as f:
        f.truncate(8 << 20)
        f.seek(1 << 20)
        f.write(os.urandom(3 << 20))
        f.seek((8 << 20) - 100)
        f.write(b"x" * 100)
    return path.read_bytes()


def test_holes_are_zeroed_on_the_destination_and_data_copied(tmp_path: Path) -> None:
    image = sparse_image(tmp_path / "img")
    dest = tmp_path / "lun"
    dest.write_bytes(b"\xee" * (9 << 20))  # old contents must not survive in the holes
    seen: list[Progress] = []
    p = copy_image(str(tmp_path / "img"), str(dest), report=seen.append, every=0)
    got = dest.read_bytes()
    assert got[: 8 << 20] == image and got[8 << 20 :] == b"\xee" * (1 << 20)
    assert p.done == 8 << 20 and p.zeroed > 0
    assert seen and seen[-1].done == 8 << 20
    assert "8.0 MiB of 8.0 MiB (100%)" in seen[-1].line(seen[-1].started + 1)


def test_extents_cover_the_file_exactly(tmp_path: Path) -> None:
    sparse_image(tmp_path / "img")
    fd = os.open(tmp_path / "img", os.O_RDONLY)
    try:
        runs = list(extents(fd, 8 << 20))
    finally:
        os.close(fd)
    assert runs[0][0] == 0 and sum(length for _, length, _ in runs) == 8 << 20
    assert any(is_data for *_, is_data in runs) and any(not d for *_, d in runs)


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"1" * 4096)
    (tmp_path / "small").write_bytes(b"2" * 512)
    with pytest.raises(CopyError, match="does not fit"):
        copy_image(str(tmp_path / "big"), str(tmp_path / "small"))
    with pytest.raises(CopyError, match=r"cannot open .*missing"):
        copy_image(str(tmp_path / "missing"), str(tmp_path / "small"))
    r = subprocess.run([sys.executable, "-m", "blockbridge", "cp", str(tmp_path / "big"),
                        str(tmp_path / "small")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("blockbridge: ") and "does not fit on" in r.stderr


def test_cli_summary_without_a_terminal(tmp_path: Path) -> None:
    from blockbridge.copy import run

    sparse_image(tmp_path / "img")
    (tmp_path / "lun").write_bytes(bytes(8 << 20))
    out = io.StringIO()
    assert run(str(tmp_path / "img"), str(tmp_path / "lun"), quiet=False, out=out) == 0
    assert out.getvalue().startswith(f"copied 8.0 MiB to {tmp_path / 'lun'} in ")
    assert "\r" not in out.getvalue()  # no progress redraws into a pipe or a log
