"""Suite-wide hooks: the ``needs`` marker (tests/needs.py)."""

from __future__ import annotations

import pytest

from tests.needs import require


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs(*tools): programs or facilities the test needs (tests/needs.py)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    wanted = [name for mark in item.iter_markers("needs") for name in mark.args]
    if wanted:
        require(*dict.fromkeys(wanted))
