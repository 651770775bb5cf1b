"""Hostile clients against a running target (in this process, over loopback TCP): the
places of unproven connections, discovery limits, the brake, CHAP reflection and
session takeover (docs/security.md)."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from blockbridge_target.backends.null import NullBackend
from blockbridge_target.lun import LogicalUnit
from blockbridge_target.server import Limits, TargetServer
from blockbridge_target.targets import TargetDef

from blockbridge.initiator.session import Session
from blockbridge.iscsi import pdu as P
from blockbridge.iscsi.constants import Stage
from blockbridge.iscsi.errors import LoginFailed
from blockbridge.iscsi.initiator_login import InitiatorLogin
from blockbridge.iscsi.login import ChapCredentials
from blockbridge.iscsi.text import decode_text, encode_text
from blockbridge.transport import ConnectionClosed, PDUStream

IQN1 = "iqn.2026-11.test:one"
IQN2 = "iqn.2026-11.test:two"
INI = "iqn.2026-11.test:host"
ALICE = ChapCredentials("alice", b"alice-secret-123")
BOB = ChapCredentials("bob", b"bob-secret-45678")
SHARED = b"shared-secret-999"  # the mistake that reflection feeds on


class Refused(Exception):
    """The target answered a login request with a failure status."""


def target(name: str, **kw: object) -> TargetDef:
    lu = LogicalUnit(0, NullBackend(1 << 20), target_name=name)
    return TargetDef(name=name, luns={0: lu}, **kw)  # type: ignore[arg-type]


@asynccontextmanager
async def running(targets: list[TargetDef], **limits: object) -> AsyncIterator[
        tuple[TargetServer, int]]:
    srv = TargetServer(targets, limits=Limits(**limits))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(srv.serve, [("127.0.0.1", 0)])
        yield srv, addresses[0][1]
        srv.shutdown()


async def closed_by_target(stream: trio.SocketStream) -> bool:
    """Whether the target closes this connection (within a second)."""
    with trio.move_on_after(1):
        try:
            return await stream.receive_some(100) == b""
        except trio.BrokenResourceError:
            return True
    return False


async def test_unproven_connections_are_capped_per_address_and_freed_by_a_login(
        caplog: pytest.LogCaptureFixture) -> None:
    async with running([target(IQN1)], max_logins_per_address=3) as (srv, port):
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        extra = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(20)]
        assert all([await closed_by_target(s) for s in extra])
        assert not await closed_by_target(idle[0])
        refusals = [r for r in caplog.records if "connection refused" in r.message]
        assert len(refusals) == 1 and "--max-logins-per-address 3" in refusals[0].message
        assert "times in the last" not in refusals[0].message
        for s in idle:
            await s.aclose()
        # normal sessions give their place back: more of them than places
        sessions = [await Session.connect("127.0.0.1", port, initiator_name=INI,
                                          target_name=IQN1) for _ in range(5)]
        assert srv.unproven_total == 0
        for s in sessions:
            await s.stream.aclose()


async def test_discovery_sessions_hold_a_place_and_end_when_idle(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running([target(IQN1)], max_logins_per_address=2,
                       discovery_idle=0.5, discovery_lifetime=5) as (srv, port):
        with trio.fail_after(10):
            d = [await Session.connect("127.0.0.1", port, initiator_name=INI,
                                       target_name=None) for _ in range(2)]
            assert srv.unproven_total == 2
            third = await trio.open_tcp_stream("127.0.0.1", port)
            assert await closed_by_target(third)
            async with trio.open_nursery() as nursery:
                for s in d:
                    nursery.start_soon(s.run)
                for _ in range(3):  # an active session lives on past the idle limit
                    await trio.sleep(0.3)
                    assert await d[0].text([("SendTargets", "All")])
                await trio.sleep(0.8)
                assert d[0].closed and d[1].closed
            assert srv.unproven_total == 0
    assert "closed: idle for 0.5s" in caplog.text


async def test_discovery_lifetime() -> None:
    async with running([], discovery_idle=5, discovery_lifetime=0.6) as (_srv, port):
        with trio.fail_after(10):
            d = await Session.connect("127.0.0.1", port, initiator_name=INI, target_name=None)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(d.run)
                with pytest.raises(Exception):  # noqa: B017 (whatever ends the session)
                    while True:
                        await d.text([("SendTargets", "All")])
                        await trio.sleep(0.1)


async def test_sessions_per_initiator_name_are_capped() -> None:
    async with running([target(IQN1)], max_sessions_per_initiator=2) as (_srv, port):
        isids = [bytes([0x80, 0, 0, 0, 0, i]) for i in range(3)]
        first = [await Session.connect("127.0.0.1", port, initiator_name=INI,
                                       target_name=IQN1, isid=i) for i in isids[:2]]
        with pytest.raises(LoginFailed, match="too many connections"):
            await Session.connect("127.0.0.1", port, initiator_name=INI, target_name=IQN1,
                                  isid=isids[2])
        # reinstating one of the two is no new session
        again = await Session.connect("127.0.0.1", port, initiator_name=INI,
                                      target_name=IQN1, isid=isids[0])
        for s in [*first, again]:
            await s.stream.aclose()


# ------------------------------------------------------------------ session takeover

async def test_another_chap_user_cannot_take_over_a_session(
        caplog: pytest.LogCaptureFixture) -> None:
    isid = bytes.fromhex("80aabbcc0001")
    t = target(IQN1, incoming={ALICE.user: ALICE.secret, BOB.user: BOB.secret})
    async with running([t]) as (_srv, port):
        with trio.fail_after(10):
            victim = await Session.connect("127.0.0.1", port, initiator_name=INI,
                                           target_name=IQN1, credentials=ALICE, isid=isid)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(victim.run)
                with pytest.raises(LoginFailed, match="not allowed"):
                    await Session.connect("127.0.0.1", port, initiator_name=INI,
                                          target_name=IQN1, credentials=BOB, isid=isid)
                await victim.command(0, bytes(6))  # TEST UNIT READY: still connected
                assert victim.closed is None
                # alice herself may reinstate her session
                again = await Session.connect("127.0.0.1", port, initiator_name=INI,
                                              target_name=IQN1, credentials=ALICE, isid=isid)
                await again.stream.aclose()
                nursery.cancel_scope.cancel()
    assert "belongs to CHAP user 'alice', not 'bob': reinstatement refused" in caplog.text


# ------------------------------------------------------------------ CHAP reflection

async def login_pdu(stream: PDUStream, pairs: list[tuple[str, str]], *, transit: bool,
                    nsg: Stage, isid: bytes) -> dict[str, str]:
    await stream.send_pdu(P.LoginRequest(transit=transit, csg=Stage.SECURITY, nsg=nsg,
                                         isid=isid, data=encode_text(pairs)))
    rsp = await stream.receive_pdu()
    assert isinstance(rsp, P.LoginResponse)
    if rsp.status_class:
        raise Refused(f"status {rsp.status_class:#x}/{rsp.status_detail:#x}")
    return dict(decode_text(rsp.data))


async def reflect(port: int) -> None:
    """Log in to IQN2 as carol without her secret: take IQN2's challenge, have IQN1
    answer it in bob's mutual CHAP (IQN1's OutgoingUser secret is carol's)."""
    isid = bytes.fromhex("80aabbcc0002")
    two = PDUStream(await trio.open_tcp_stream("127.0.0.1", port))
    await login_pdu(two, [("InitiatorName", INI), ("SessionType", "Normal"),
                          ("TargetName", IQN2), ("AuthMethod", "CHAP")],
                    transit=False, nsg=Stage.OPERATIONAL, isid=isid)
    keys = await login_pdu(two, [("CHAP_A", "7")], transit=False, nsg=Stage.OPERATIONAL,
                           isid=isid)
    ident, challenge = int(keys["CHAP_I"]), bytes.fromhex(keys["CHAP_C"][2:])

    def rigged(n: int) -> bytes:
        return bytes([ident]) if n == 1 else challenge

    one = PDUStream(await trio.open_tcp_stream("127.0.0.1", port))
    ini = InitiatorLogin(initiator_name=INI, target_name=IQN1, isid=os.urandom(6),
                         credentials=BOB, target_credentials=ChapCredentials("t1", b"?"),
                         random_bytes=rigged, chap_algorithms=(7,))
    req = ini.start(cmdsn=1)
    answer = ""
    while True:
        await one.send_pdu(req)
        rsp = await one.receive_pdu()
        assert isinstance(rsp, P.LoginResponse)
        answer = dict(decode_text(rsp.data)).get("CHAP_R", answer)
        if answer or rsp.status_class:
            break
        nxt = ini.receive(rsp)
        assert nxt is not None
        req = nxt
    if not answer:
        raise Refused("IQN1 did not answer the relayed challenge")
    await login_pdu(two, [("CHAP_N", "carol"), ("CHAP_R", answer)], transit=True,
                    nsg=Stage.OPERATIONAL, isid=isid)


def reflection_targets() -> list[TargetDef]:
    return [target(IQN1, incoming={BOB.user: BOB.secret},
                   outgoing=ChapCredentials("t1", SHARED)),
            target(IQN2, incoming={"carol": SHARED})]


async def test_cross_account_reflection_fails(caplog: pytest.LogCaptureFixture) -> None:
    # (the configuration loader refuses such secrets; the runtime check holds without it)
    async with running(reflection_targets()) as (_srv, port):
        with trio.fail_after(10), pytest.raises((Refused, ConnectionClosed)):
            await reflect(port)
    assert "CHAP user 'bob' sent a challenge this target issued to another login: " \
           "reflection refused" in caplog.text


async def test_the_reflection_test_is_a_real_attack() -> None:
    class Forgetful:
        def add(self, challenge: bytes) -> None:
            pass

        def __contains__(self, challenge: object) -> bool:
            return False

    async with running(reflection_targets()) as (srv, port):
        srv.recent_challenges = Forgetful()  # type: ignore[assignment]
        with trio.fail_after(10):
            await reflect(port)  # logged in as carol


# ------------------------------------------------------------------ the brake

async def guess(port: int, secret: bytes, isid: bytes) -> tuple[bool, float]:
    """One CHAP login as alice; whether it worked, and how long its last answer took."""
    stream = PDUStream(await trio.open_tcp_stream("127.0.0.1", port))
    ini = InitiatorLogin(random_bytes=os.urandom, initiator_name=INI, target_name=IQN1, isid=isid,
                         credentials=ChapCredentials("alice", secret), chap_algorithms=(7,))
    req: P.LoginRequest | None = ini.start(cmdsn=1)
    took = 0.0
    try:
        while req is not None:
            start = trio.current_time()
            await stream.send_pdu(req)
            rsp = await stream.receive_pdu()
            assert isinstance(rsp, P.LoginResponse)
            if b"CHAP_R=" in bytes(req.data):  # the answer that tells right from wrong
                took = trio.current_time() - start
            req = ini.receive(rsp)
        return True, took
    except LoginFailed:
        return False, took
    finally:
        await stream.aclose()


async def test_parallel_guesses_take_as_long_as_the_brake_says() -> None:
    brake = 0.05
    t = target(IQN1, incoming={ALICE.user: ALICE.secret})
    async with running([t], login_brake=brake, max_logins_per_address=200) as (srv, port):
        results: list[tuple[bool, float]] = []

        async def one(i: int) -> None:
            results.append(await guess(port, b"wrong-secret-%03d" % i,
                                       bytes([0x80, 0, 0, 1, 0, i])))

        start = trio.current_time()
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(100):
                    nursery.start_soon(one, i)
        elapsed = trio.current_time() - start
        assert len(results) == 100 and not any(ok for ok, _ in results)
        # two are free, then every answer waits for the one before, `brake` apart
        assert elapsed >= 98 * brake
        # the address is penalised: a right guess waits like a wrong one
        ok_wrong, wrong = await guess(port, b"wrong-secret-xyz", bytes.fromhex("800000020001"))
        ok_right, right = await guess(port, ALICE.secret, bytes.fromhex("800000020002"))
        assert not ok_wrong and ok_right
        assert right >= brake and right >= wrong - 0.02
        print(f"100 parallel wrong guesses: {elapsed:.2f} s (brake {brake} s, at least "
              f"{98 * brake:.2f} s); then wrong {wrong * 1000:.0f} ms, right {right * 1000:.0f} ms")
        assert srv.brake.failures("127.0.0.1", trio.current_time()) == srv.brake.KEEP


# ------------------------------------------------------------------ CHAP digests

async def test_either_side_can_refuse_md5(caplog: pytest.LogCaptureFixture) -> None:
    t = target(IQN1, incoming={ALICE.user: ALICE.secret})
    async with running([t], chap_algorithms=(5,)) as (_srv, port):
        with trio.fail_after(10):
            with pytest.raises(LoginFailed, match="authentication failed"):
                await Session.connect("127.0.0.1", port, initiator_name=INI,
                                      target_name=IQN1, credentials=ALICE,
                                      chap_algorithms=(7, 6))
            s = await Session.connect("127.0.0.1", port, initiator_name=INI,
                                      target_name=IQN1, credentials=ALICE)  # MD5 allowed
            await s.stream.aclose()
    assert "retrying with MD5 only" not in caplog.text
    assert "no supported CHAP algorithm in '7,6'" in caplog.text
