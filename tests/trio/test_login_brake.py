"""Repeated failed logins from one address are slowed down, per address, for a minute."""

from __future__ import annotations

import trio
from blockbridge_target.server import TargetServer


async def test_failed_logins_are_slowed_down(autojump_clock: trio.testing.MockClock) -> None:
    server = TargetServer([])
    delays = [server.note_login_failure("10.0.0.1:4000", "bad") for _ in range(8)]
    assert delays == [0, 0, 1, 2, 4, 8, 10, 10]
    assert server.note_login_failure("10.0.0.2:4000", "bad") == 0  # other addresses unaffected
    await trio.sleep(61)
    assert server.note_login_failure("10.0.0.1:4000", "bad") == 0  # the window has passed
