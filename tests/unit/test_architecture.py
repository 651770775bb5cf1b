"""The import layering that docs/architecture.md states, checked on every import.

Each source file belongs to one layer.  It may import its own layer, the layers its layer
uses, the standard library (the core only its pure modules) and the outside packages named
for its layer; nothing else.  Every import is resolved to a module, absolute or relative
(``from ..transport import X``, ``from . import chap``), at module level or inside a function.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"blockbridge": "blockbridge", "blockbridge_target": "target"}  # import name: dir


@dataclass(frozen=True)
class Layer:
    name: str
    files: tuple[str, ...]  # a path ending in "/" holds everything below it
    uses: tuple[str, ...]  # the lower layers it may import
    packages: frozenset[str]  # outside packages it may import, besides the standard library


LAYERS = (
    Layer("core", ("blockbridge/iscsi/", "blockbridge/scsi/", "blockbridge/fuse/protocol.py",
                   "blockbridge/fuse/structs.py", "blockbridge/fuse/replies.py",
                   "blockbridge/fuse/negotiation.py"), (), frozenset({"crc32c"})),
    Layer("shared", ("blockbridge/__init__.py", "blockbridge/buffers.py",
                     "blockbridge/files.py", "blockbridge/systemd.py", "blockbridge/tls.py"),
          ("core",), frozenset({"cryptography"})),
    Layer("transport", ("blockbridge/transport.py", "blockbridge/poller.py"), ("core", "shared"),
          frozenset({"trio"})),
    Layer("initiator", ("blockbridge/initiator/",), ("core", "shared", "transport"),
          frozenset({"trio"})),
    Layer("fuse", ("blockbridge/fuse/",), ("core", "shared", "transport", "initiator"),
          frozenset({"trio", "pyfuse3"})),
    Layer("cli", ("blockbridge/__main__.py", "blockbridge/cli.py", "blockbridge/mount.py",
                  "blockbridge/control.py", "blockbridge/copy.py", "blockbridge/credentials.py",
                  "blockbridge/state.py"),
          ("core", "shared", "transport", "initiator", "fuse"),
          frozenset({"trio", "platformdirs"})),
    Layer("target", ("target/",), ("core", "shared", "transport"),
          frozenset({"trio", "outcome", "nbd"})),
)
BY_NAME = {layer.name: layer for layer in LAYERS}
# The core computes; it has no sockets, files, processes, clocks or randomness of its own.
CORE_STDLIB = frozenset({"__future__", "abc", "base64", "binascii", "collections", "dataclasses",
                         "enum", "errno", "functools", "hashlib", "hmac", "itertools", "math",
                         "operator", "re", "string", "struct", "typing", "unicodedata"})


def source_files() -> list[Path]:
    return sorted(p for d in PACKAGES.values() for p in (ROOT / d).rglob("*.py"))


def module_of(path: str) -> str:
    """'target/backends/file.py' -> 'blockbridge_target.backends.file'."""
    top, *rest = Path(path).with_suffix("").parts
    name = [next(k for k, v in PACKAGES.items() if v == top), *rest]
    return ".".join(name[:-1] if name[-1] == "__init__" else name)


MODULES = {module_of(str(p.relative_to(ROOT))): str(p.relative_to(ROOT)) for p in source_files()}


def layer_of(path: str) -> Layer | None:
    for layer in LAYERS:
        if any(path == f or (f.endswith("/") and path.startswith(f)) for f in layer.files):
            return layer
    return None


def imported_modules(tree: ast.AST, module: str, is_package: bool
                     ) -> list[tuple[int, str | None, str]]:
    """(line, resolved module or None if it cannot be, as written) for every import."""
    found: list[tuple[int, str | None, str]] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            written = "." * node.level + (node.module or "")
            base: str | None = node.module or ""
            if node.level:
                parts = package.split(".")
                up = node.level - 1
                base = (".".join([*parts[: len(parts) - up], *filter(None, [node.module])])
                        if up < len(parts) else None)
            for alias in node.names:
                # "from pkg import name": the submodule pkg.name if there is one, else pkg
                sub = f"{base}.{alias.name}" if base else alias.name
                target = sub if sub in MODULES else base
                found.append((node.lineno, target, f"{written} import {alias.name}"))
    return found


def violations(path: str, source: str) -> list[str]:
    layer = layer_of(path)
    if layer is None:
        return [f"{path}: belongs to no layer; add it to LAYERS here and to the table in "
                "docs/architecture.md"]
    allowed = {layer.name, *layer.uses}
    module = module_of(path)
    out = []
    for line, target, written in imported_modules(ast.parse(source, path), module,
                                                  path.endswith("__init__.py")):
        where = f"{path}:{line}: {written!r}"
        top = (target or "").partition(".")[0]
        if target is None:
            out.append(f"{where} goes above the top-level package")
        elif top in PACKAGES:
            their = layer_of(MODULES[target]) if target in MODULES else None
            if their is None:
                out.append(f"{where} names {target}, which is not a module of ours")
            elif their.name not in allowed:
                out.append(f"{where} imports {target} of the {their.name} layer; the "
                           f"{layer.name} layer may import only {', '.join(sorted(allowed))}")
        elif top in sys.stdlib_module_names:
            if layer.name == "core" and top not in CORE_STDLIB:
                out.append(f"{where}: the core does not import {top} (its standard library "
                           f"is {', '.join(sorted(CORE_STDLIB))})")
        elif top not in layer.packages:
            out.append(f"{where}: the {layer.name} layer does not import the outside package "
                       f"{top} (it may: {', '.join(sorted(layer.packages)) or 'none'})")
    return out


def test_every_import_keeps_to_the_layers() -> None:
    found = [v for p in source_files()
             for v in violations(str(p.relative_to(ROOT)), p.read_text())]
    assert not found, "\n".join(found)


def test_relative_and_nested_imports_are_resolved() -> None:
    source = ("from ..transport import PDUStream\n"
              "from . import chap\n"
              "from .pdu import Buffer\n"
              "def f():\n"
              "    import time\n"
              "    from .. import fuse\n"
              "    from .... import x\n")
    found = violations("blockbridge/iscsi/example.py", source)
    assert found == [
        "blockbridge/iscsi/example.py:1: '..transport import PDUStream' imports "
        "blockbridge.transport of the transport layer; the core layer may import only core",
        "blockbridge/iscsi/example.py:5: 'time': the core does not import time (its standard "
        f"library is {', '.join(sorted(CORE_STDLIB))})",
        "blockbridge/iscsi/example.py:6: '.. import fuse' imports blockbridge.fuse of the fuse "
        "layer; the core layer may import only core",
        "blockbridge/iscsi/example.py:7: '.... import x' goes above the top-level package",
    ]
    assert violations("target/example.py", "from blockbridge.initiator import session\n") == [
        "target/example.py:1: 'blockbridge.initiator import session' imports "
        "blockbridge.initiator.session of the initiator layer; the target layer may import "
        "only core, shared, target, transport"]
    assert violations("blockbridge/fuse/example.py", "from blockbridge_target import lun\n")


def test_the_architecture_doc_states_the_same_layers() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| \*\*(\w+)\*\* \|(.*)\|(.*)\|(.*)\|$", doc, re.MULTILINE)
    stated = {name: (set(re.findall(r"`([^`]+)`", files)), set(re.findall(r"\w+", uses)),
                     set(re.findall(r"`([^`]+)`", packages)))
              for name, files, uses, packages in rows}
    assert stated == {layer.name: (set(layer.files), set(layer.uses), set(layer.packages))
                      for layer in LAYERS}, \
        "the layer table of docs/architecture.md and LAYERS in this test must say the same"
