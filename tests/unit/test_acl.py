"""initiators.allow / targets.allow semantics, with IET's quirks fixed and reproduced."""

from __future__ import annotations

from pathlib import Path

import pytest
from blockbridge_target.acl import AccessControl, bre_to_python, decide, parse_rules

T1 = "iqn.2026-11.x:one"
T2 = "iqn.2026-11.x:two"
INI = "iqn.1998-01.com.vmware:esx1.example.com"


def allowed(text: str, target: str, address: str, initiator: str = INI, **kw: bool) -> bool:
    return decide(parse_rules(text, **kw), target, initiator, address, **kw)


@pytest.mark.parametrize("text, target, address, expected", [
    ("ALL ALL\n", T1, "10.0.0.1", True),
    ("", T1, "10.0.0.1", False),  # file exists, no applicable line: deny
    (f"{T1} 10.0.0.1\nALL ALL\n", T1, "10.0.0.2", False),  # first applicable line decides
    (f"{T1} 10.0.0.1\nALL ALL\n", T2, "10.0.0.2", True),
    ("ALL 192.168.0.0/16\n", T1, "192.168.7.9", True),
    ("ALL 192.168.0.0/16\n", T1, "10.0.0.1", False),
    ("ALL [3ffe:505:2:1::]/64\n", T1, "3ffe:505:2:1::5", True),
    ("ALL [3ffe:302:11:1:211:43ff:fe31:5ae2]\n", T1, "3ffe:302:11:1:211:43ff:fe31:5ae2", True),
    ("ALL 10.0.0.1, 10.0.0.2\n", T1, "10.0.0.2", True),
    ("# comment\nALL 10.0.0.5/32\n", T1, "10.0.0.5", True),  # IET: /32 never matched
    ("ALL 192.168.1.5/24\n", T1, "192.168.1.77", True),  # IET: host bits never matched
    ("ALL 10.0.0.1\n", T1, "::ffff:10.0.0.1", True),  # IPv4-mapped IPv6
])
def test_rules(text: str, target: str, address: str, expected: bool) -> None:
    assert allowed(text, target, address) is expected


def test_initiator_name_regex() -> None:
    text = "ALL iqn\\.1998-01\\.com\\.vmware:.*\\.example\\.com\n"
    assert allowed(text, T1, "10.9.9.9")
    assert not allowed(text, T1, "10.9.9.9", initiator="iqn.2026-11.other:host")
    assert allowed("ALL .*:esx[1-4]\\.example\\.com\n", T1, "1.2.3.4")


def test_bre_translation() -> None:
    assert bre_to_python(r"a\(b\)\{2\}+?") == r"a(b){2}\+\?"


@pytest.mark.parametrize("text, address", [
    ("ALL 10.0.0.5/32\n", "10.0.0.5"),
    ("ALL 192.168.1.5/24\n", "192.168.1.77"),
])
def test_exact_iet_reproduces_quirks(text: str, address: str) -> None:
    assert not allowed(text, T1, address, exact_iet=True)


def test_exact_iet_ignores_last_line_without_newline() -> None:
    assert not allowed("ALL ALL", T1, "10.0.0.1", exact_iet=True)
    assert allowed("ALL ALL", T1, "10.0.0.1")


def test_files_are_reread_and_missing_file_allows(tmp_path: Path) -> None:
    path = tmp_path / "initiators.allow"
    acl = AccessControl(path)
    assert acl.initiator_allowed(T1, INI, "10.0.0.1")  # no file: allow
    path.write_text("ALL 10.0.0.2\n")
    assert not acl.initiator_allowed(T1, INI, "10.0.0.1")
    path.write_text("ALL 10.0.0.1, 10.0.0.2\n")
    assert acl.initiator_allowed(T1, INI, "10.0.0.1")


def test_targets_allow_checks_local_address(tmp_path: Path) -> None:
    path = tmp_path / "targets.allow"
    path.write_text(f"{T1} 127.0.0.1\nALL ALL\n")
    acl = AccessControl(None, path)
    assert acl.portal_allowed(T1, "127.0.0.1")
    assert not acl.portal_allowed(T1, "10.1.1.1")
    assert acl.portal_allowed(T2, "10.1.1.1")
