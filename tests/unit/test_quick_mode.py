"""blockbridge-target's quick mode: --disk FILE or --lun PARAMS, through the same backend
registry and checks as ietd.conf."""

from __future__ import annotations

from pathlib import Path

import pytest
from blockbridge_target.backends.memory import MemoryBackend
from blockbridge_target.cli import UsageError, build_parser, quick_target


def target_of(*argv: str):  # type: ignore[no-untyped-def]
    return quick_target(build_parser().parse_args(list(argv)))


def test_lun_serves_any_registered_type() -> None:
    t = target_of("--lun", "Type=memory,Size=4M", "--block-size", "4096")
    lu = t.luns[0]
    assert isinstance(lu.backend, MemoryBackend) and lu.size_bytes == 4 << 20
    assert lu.block_size == 4096 and t.name.endswith(".memory")
    lu.close()


def test_disk_creates_a_file(tmp_path: Path) -> None:
    t = target_of("--disk", str(tmp_path / "d.img"), "--size", "1M")
    lu = t.luns[0]
    assert lu.size_bytes == 1 << 20 and lu.backend.description.startswith("file")
    lu.close()
    ro = target_of("--disk", str(tmp_path / "d.img"), "--read-only").luns[0]
    assert ro.read_only and ro.size_bytes == 1 << 20
    ro.close()


@pytest.mark.parametrize("argv, message", [
    (("--lun", "Type=tape"), "--lun Type=tape: Lun 0: unknown Type 'tape' (use "),
    (("--lun", "Type=memory"), "--lun Type=memory: Lun 0 has no Size (add Size=..."),
    (("--lun", "Type=fileio,Path=/nonexistent/x"),
     "--lun: Lun 0: backing file /nonexistent/x does not exist"),
])
def test_bad_lun_is_one_clear_line(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(UsageError) as info:
        target_of(*argv)
    assert str(info.value).startswith(message)
