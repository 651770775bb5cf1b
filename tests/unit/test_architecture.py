"""Imports run from pure to impure; the sans-IO core never touches I/O modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IO_MODULES = {"trio", "pyfuse3", "socket", "ssl", "time", "asyncio", "selectors", "subprocess"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_core_is_sans_io() -> None:
    for package in ("blockbridge/iscsi", "blockbridge/scsi"):
        for path in modules(package):
            bad = {m for m in imports_of(path) if m.split(".")[0] in IO_MODULES}
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_core_does_not_import_the_shells() -> None:
    shells = ("blockbridge.transport", "blockbridge.initiator", "blockbridge.fuse",
              "blockbridge.cli", "blockbridge_target")
    for package in ("blockbridge/iscsi", "blockbridge/scsi"):
        for path in modules(package):
            bad = {m for m in imports_of(path) if m.startswith(shells)}
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_initiator_side_never_imports_the_target() -> None:
    for path in modules("blockbridge"):
        bad = {m for m in imports_of(path) if m.startswith("blockbridge_target")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_target_never_imports_the_initiator_side() -> None:
    forbidden = ("blockbridge.initiator", "blockbridge.fuse", "blockbridge.cli", "pyfuse3")
    for path in modules("target"):
        bad = {m for m in imports_of(path) if m.startswith(forbidden)}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
