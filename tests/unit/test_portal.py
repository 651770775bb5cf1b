"""Portal addresses on both command lines: one parser, each CLI with its own message."""

from __future__ import annotations

import pytest
from blockbridge_target import cli as target_cli

from blockbridge import cli
from blockbridge.iscsi.portal import split_portal


@pytest.mark.parametrize("text, portal", [
    ("filer", ("filer", 3260)),
    ("10.0.0.1:3261", ("10.0.0.1", 3261)),
    ("[::1]", ("::1", 3260)),
    ("[fe80::1]:860", ("fe80::1", 860)),
    ("::1", None),
    ("host:", None),
    ("host:port", None),
    ("[::1]:", None),
    ("", None),
])
def test_split_portal(text: str, portal: tuple[str, int] | None) -> None:
    assert split_portal(text) == portal


def test_each_command_line_says_what_it_wants() -> None:
    assert cli.parse_portal("filer:3261") == target_cli.parse_portal("filer:3261")
    with pytest.raises(cli.UsageError, match=r"^invalid portal 'a:b': use HOST or HOST:PORT$"):
        cli.parse_portal("a:b")
    with pytest.raises(target_cli.UsageError, match=r"^invalid portal 'a:b': use HOST:PORT, "):
        target_cli.parse_portal("a:b")
    with pytest.raises(target_cli.UsageError, match=r"^invalid port in 'a:70000'$"):
        target_cli.parse_portal("a:70000")
