"""Hostile clients against a running target (in this process, over loopback TCP): what
the target tells about itself and what lands in its log (docs/security.md): forged
initiator names, hidden targets, SendTargets in a normal session, TLS portals, and an
access list that vanishes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from blockbridge_target.acl import AccessControl
from blockbridge_target.backends.null import NullBackend
from blockbridge_target.lun import LogicalUnit
from blockbridge_target.server import Limits, TargetServer
from blockbridge_target.targets import TargetDef

from blockbridge.initiator.session import Session
from blockbridge.iscsi import pdu as P
from blockbridge.iscsi.constants import Stage
from blockbridge.iscsi.errors import LoginFailed
from blockbridge.iscsi.login import ChapCredentials
from blockbridge.iscsi.text import encode_text
from blockbridge.tls import ClientTLS, generate_self_signed, server_context
from blockbridge.transport import PDUStream

OPEN = "iqn.2026-11.test:open"
SECRET = "iqn.2026-11.test:secret"
INI = "iqn.2026-11.test:host"
DISCOVER = ChapCredentials("discover", b"discovery-secret-1")


def target(name: str) -> TargetDef:
    return TargetDef(name=name, luns={0: LogicalUnit(0, NullBackend(1 << 20), target_name=name)})


@asynccontextmanager
async def running(*, acl: AccessControl | None = None, **kw: object
                  ) -> AsyncIterator[TargetServer]:
    srv = TargetServer([target(OPEN), target(SECRET)], acl=acl,  # no brake: many refusals
                       limits=Limits(login_brake=0), **kw)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(srv.serve, [("127.0.0.1", 0)])
        yield srv
        srv.shutdown()


def port_of(srv: TargetServer) -> int:
    return srv.addresses[0][1]


async def raw_login(port: int, pairs: list[tuple[str, str]]) -> tuple[int, int]:
    """One login request of our making; the status of the answer."""
    stream = PDUStream(await trio.open_tcp_stream("127.0.0.1", port))
    try:
        await stream.send_pdu(P.LoginRequest(transit=True, csg=Stage.SECURITY,
                                             nsg=Stage.OPERATIONAL, isid=bytes(6),
                                             data=encode_text(pairs)))
        rsp = await stream.receive_pdu()
        assert isinstance(rsp, P.LoginResponse)
        return rsp.status_class, rsp.status_detail
    finally:
        await stream.aclose()


async def send_targets(port: int, value: str, *, target_name: str | None,
                       credentials: ChapCredentials | None = None,
                       tls: ClientTLS | None = None) -> list[tuple[str, str]]:
    s = await Session.connect("127.0.0.1", port, initiator_name=INI, target_name=target_name,
                              credentials=credentials, tls=tls)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(s.run)
        pairs = await s.text([("SendTargets", value)])
        await s.logout()
        nursery.cancel_scope.cancel()
    return pairs


def names(pairs: list[tuple[str, str]]) -> list[str]:
    return [v for k, v in pairs if k == "TargetName"]


async def test_a_forged_initiator_name_is_refused_and_cannot_forge_log_lines(
        caplog: pytest.LogCaptureFixture) -> None:
    forged = f"{INI}\n2026-11-05 12:00:00 INFO blockbridge_target: admin logged in"
    async with running() as srv:
        status = await raw_login(port_of(srv), [
            ("InitiatorName", forged), ("SessionType", "Normal"), ("TargetName", OPEN),
            ("AuthMethod", "None")])
        assert status == (2, 0)  # initiator error
        await trio.sleep(0.1)
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "invalid InitiatorName 'iqn.2026-11.test:host\\x0a2026-11-05" in lines[0]
    assert "admin logged in" not in caplog.text.replace(lines[0], "")


async def test_a_hidden_target_answers_as_a_missing_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    allow = tmp_path / "initiators.allow"
    allow.write_text(f"{SECRET} iqn\\.2026-11\\.test:trusted\nALL ALL\n")
    async with running(acl=AccessControl(allow)) as srv:
        login = [("InitiatorName", INI), ("SessionType", "Normal"), ("AuthMethod", "None")]
        hidden = await raw_login(port_of(srv), [*login, ("TargetName", SECRET)])
        missing = await raw_login(port_of(srv), [*login, ("TargetName",
                                                          "iqn.2026-11.test:nothing\x1b[2J")])
        assert hidden == missing == (2, 3)  # 0x0203 target not found, both
        await trio.sleep(0.1)
    text = caplog.text
    assert (f"login of {INI} to {SECRET} refused: target not found on this portal: {SECRET} "
            f"is hidden from {INI} at 127.0.0.1 by initiators.allow or targets.allow") in text
    assert "no target iqn.2026-11.test:nothing\\x1b[2J here" in text
    assert "\x1b" not in text


async def test_send_targets_in_a_normal_session_follows_the_discovery_rules() -> None:
    # discovery needs CHAP: a normal session of a CHAP-less target sees itself only
    async with running(discovery_users={DISCOVER.user: DISCOVER.secret}) as srv:
        port = port_of(srv)
        with pytest.raises(LoginFailed, match="authentication failed"):
            await send_targets(port, "All", target_name=None)
        assert names(await send_targets(port, "All", target_name=None,
                                        credentials=DISCOVER)) == [OPEN, SECRET]
        assert names(await send_targets(port, "All", target_name=OPEN)) == [OPEN]
        assert names(await send_targets(port, SECRET, target_name=OPEN)) == []
        assert names(await send_targets(port, "", target_name=OPEN)) == [OPEN]
    # discovery open to all: a normal session sees what a discovery session would
    async with running() as srv:
        assert names(await send_targets(port_of(srv), "All", target_name=OPEN)) == \
            [OPEN, SECRET]


async def test_tls_portals_advertise_tls_portals_only(tmp_path: Path) -> None:
    crt, key, fp = generate_self_signed(tmp_path, "localhost")
    srv = TargetServer([target(OPEN)])
    async with trio.open_nursery() as nursery:
        listeners = [*await srv.open_listeners([("127.0.0.1", 0)]),
                     *await srv.open_listeners([("127.0.0.1", 0)],
                                               tls=server_context(str(crt), str(key)))]
        await nursery.start(srv.serve_listeners, listeners)
        (plain,), (tls,) = ([a for a in srv.addresses if (a in srv.tls_addresses) == t]
                            for t in (False, True))
        over_tls = await send_targets(tls[1], "All", target_name=None,
                                      tls=ClientTLS(pinned=fp))
        over_plain = await send_targets(plain[1], "All", target_name=None)
        srv.shutdown()
    assert [v for k, v in over_tls if k == "TargetAddress"] == [f"127.0.0.1:{tls[1]},1"]
    assert [v for k, v in over_plain if k == "TargetAddress"] == [f"127.0.0.1:{plain[1]},1"]


async def test_a_vanished_initiators_allow_keeps_its_last_rules(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    allow = tmp_path / "initiators.allow"
    allow.write_text("ALL iqn\\.2026-11\\.test:trusted\n")
    async with running(acl=AccessControl(allow)) as srv:
        port = port_of(srv)
        with pytest.raises(LoginFailed, match="0x0203"):
            await Session.connect("127.0.0.1", port, initiator_name=INI, target_name=OPEN)
        allow.unlink()
        for _ in range(3):
            with pytest.raises(LoginFailed, match="0x0203"):
                await Session.connect("127.0.0.1", port, initiator_name=INI, target_name=OPEN)
        allow.write_text("ALL ALL\n")
        s = await Session.connect("127.0.0.1", port, initiator_name=INI, target_name=OPEN)
        await s.stream.aclose()
    vanished = [r for r in caplog.records if "has vanished" in r.getMessage()]
    assert len(vanished) == 1
    assert vanished[0].getMessage() == (
        f"{allow} has vanished; keeping its last 1 rules (to allow everyone, write 'ALL ALL' "
        "in it)")
