"""The initiator and target login machines wired to each other in memory."""

from __future__ import annotations

import itertools
import os
from typing import Any

import pytest

from blockbridge.iscsi import chap
from blockbridge.iscsi.constants import LoginStatus, Stage
from blockbridge.iscsi.errors import AuthenticationError, LoginFailed, NegotiationError
from blockbridge.iscsi.initiator_login import InitiatorLogin
from blockbridge.iscsi.login import ChapCredentials, TargetLogin, TargetLoginConfig
from blockbridge.iscsi.pdu import LoginRequest
from blockbridge.iscsi.text import decode_text, encode_text

IQN = "iqn.2026-11.test:disk"
INI = "iqn.2026-11.test:host"
ISID = bytes.fromhex("400001370000")


def counter_random() -> callable:  # type: ignore[valid-type]
    c = itertools.count(1)
    return lambda n: bytes((next(c) + i) & 0xFF for i in range(n))


def make_initiator(target_name: str | None, **options: Any) -> InitiatorLogin:
    options.setdefault("random_bytes", counter_random())
    return InitiatorLogin(initiator_name=INI, target_name=target_name, isid=ISID, **options)


def make_target(cfg: TargetLoginConfig, discovery: TargetLoginConfig | None = None) -> TargetLogin:
    def resolve(session_type: str, target: str, initiator: str) -> TargetLoginConfig | LoginStatus:
        if session_type == "Discovery":
            return discovery or TargetLoginConfig(target_name="")
        return cfg if target == cfg.target_name else LoginStatus.NOT_FOUND

    return TargetLogin(portal_group_tag=1, resolve=resolve, random_bytes=counter_random())


def run(ini: InitiatorLogin, tgt: TargetLogin, *, tsih: int = 7) -> None:
    req: LoginRequest | None = ini.start()
    statsn = 100
    for _ in range(20):
        assert req is not None
        if tgt.needs_tsih:
            tgt.assign_tsih(tsih)
        rsp = tgt.receive(req, statsn=statsn, expcmdsn=req.cmdsn, maxcmdsn=req.cmdsn + 31)
        statsn += 1
        req = ini.receive(rsp)
        if req is None:
            assert tgt.done
            return
    raise AssertionError("login did not finish")


def test_no_auth_login_negotiates_defaults() -> None:
    tgt = make_target(TargetLoginConfig(target_name=IQN))
    ini = make_initiator(IQN)
    run(ini, tgt)
    assert ini.done and tgt.done and ini.tsih == 7
    assert ini.params.immediate_data and not ini.params.initial_r2t
    assert ini.params.max_burst_length == 16776192
    assert ini.params.max_xmit_data_segment_length == 1048576
    assert tgt.params.max_xmit_data_segment_length == 1048576
    assert ini.params.first_burst_length == tgt.params.first_burst_length == 1048576
    assert tgt.params.initiator_name == INI
    assert ini.target_portal_group_tag == 1


def test_target_limits_win() -> None:
    cfg = TargetLoginConfig(target_name=IQN, operational={
        "MaxBurstLength": "65536", "ImmediateData": "No", "MaxRecvDataSegmentLength": "8192",
        "HeaderDigest": "CRC32C", "DataDigest": "CRC32C,None"})
    tgt = make_target(cfg)
    ini = make_initiator(IQN,
                         proposals={"HeaderDigest": "CRC32C,None", "DataDigest": "None"})
    run(ini, tgt)
    for params in (ini.params, tgt.params):
        assert params.max_burst_length == 65536
        assert params.first_burst_length == 65536
        assert not params.immediate_data
        assert params.header_digest and not params.data_digest
    assert ini.params.max_xmit_data_segment_length == 8192


def test_digest_required_but_refused_fails() -> None:
    tgt = make_target(TargetLoginConfig(target_name=IQN, operational={"HeaderDigest": "CRC32C"}))
    ini = make_initiator(IQN)
    with pytest.raises(LoginFailed):
        run(ini, tgt)
    assert tgt.failed


@pytest.mark.parametrize("algs", [(5,), (6,), (7,), (8,), (7, 6, 5)])
def test_chap_and_mutual_chap(algs: tuple[int, ...]) -> None:
    cfg = TargetLoginConfig(target_name=IQN, incoming={"alice": b"alice-secret-123"},
                            outgoing=ChapCredentials("tgt", b"target-secret-456"))
    tgt = make_target(cfg)
    ini = make_initiator(IQN,
                         credentials=ChapCredentials("alice", b"alice-secret-123"),
                         target_credentials=ChapCredentials("tgt", b"target-secret-456"),
                         chap_algorithms=algs, random_bytes=counter_random())
    run(ini, tgt)
    assert tgt.auth_user == "alice" and ini.done


def test_wrong_secret_is_authentication_failure() -> None:
    tgt = make_target(TargetLoginConfig(target_name=IQN, incoming={"alice": b"alice-secret-123"}))
    ini = make_initiator(IQN,
                         credentials=ChapCredentials("alice", b"wrong-secret-0000"))
    with pytest.raises(LoginFailed) as info:
        run(ini, tgt)
    assert info.value.status == LoginStatus.AUTHENTICATION_FAILURE
    assert "authentication failed" in str(info.value)


def test_wrong_target_secret_is_refused_by_initiator() -> None:
    cfg = TargetLoginConfig(target_name=IQN, incoming={"alice": b"alice-secret-123"},
                            outgoing=ChapCredentials("tgt", b"impostor-secret-9"))
    ini = make_initiator(IQN,
                         credentials=ChapCredentials("alice", b"alice-secret-123"),
                         target_credentials=ChapCredentials("tgt", b"target-secret-456"))
    with pytest.raises(AuthenticationError, match="mutual"):
        run(ini, make_target(cfg))


def test_chap_required_but_initiator_has_none() -> None:
    tgt = make_target(TargetLoginConfig(target_name=IQN, incoming={"alice": b"alice-secret-123"}))
    ini = make_initiator(IQN)
    with pytest.raises(LoginFailed) as info:
        run(ini, tgt)
    assert info.value.status == LoginStatus.AUTHENTICATION_FAILURE


def test_mutual_requested_but_target_skips_auth() -> None:
    tgt = make_target(TargetLoginConfig(target_name=IQN))
    ini = make_initiator(IQN,
                         credentials=ChapCredentials("alice", b"alice-secret-123"),
                         target_credentials=ChapCredentials("tgt", b"target-secret-456"))
    with pytest.raises(AuthenticationError):
        run(ini, tgt)


def test_unknown_target() -> None:
    tgt = make_target(TargetLoginConfig(target_name=IQN))
    ini = make_initiator("iqn.2026-11.test:nope")
    with pytest.raises(LoginFailed, match="not found") as info:
        run(ini, tgt)
    assert info.value.status == LoginStatus.NOT_FOUND


def test_discovery_session() -> None:
    tgt = make_target(TargetLoginConfig(target_name=IQN))
    ini = make_initiator(None)
    run(ini, tgt)
    assert tgt.session_type == "Discovery" and ini.params.session_type == "Discovery"


def test_missing_initiator_name() -> None:
    tgt = make_target(TargetLoginConfig(target_name=IQN))
    req = LoginRequest(transit=True, nsg=Stage.OPERATIONAL, isid=ISID,
                       data=encode_text([("TargetName", IQN)]))
    rsp = tgt.receive(req, statsn=1, expcmdsn=0, maxcmdsn=0)
    assert (rsp.status_class, rsp.status_detail) == (2, 7)
    assert tgt.failed
    with pytest.raises(LoginFailed):
        tgt.receive(req, statsn=1, expcmdsn=0, maxcmdsn=0)


def test_multi_pdu_text_with_continue_bit() -> None:
    tgt = make_target(TargetLoginConfig(target_name=IQN))
    text = encode_text([("InitiatorName", INI), ("TargetName", IQN), ("AuthMethod", "None")])
    first = LoginRequest(cont=True, isid=ISID, data=text[:10])
    rsp = tgt.receive(first, statsn=1, expcmdsn=0, maxcmdsn=0)
    assert rsp.status_class == 0 and not rsp.data
    last = LoginRequest(transit=True, nsg=Stage.OPERATIONAL, isid=ISID, data=text[10:])
    rsp = tgt.receive(last, statsn=2, expcmdsn=0, maxcmdsn=0)
    assert rsp.status_class == 0 and rsp.transit
    assert dict(decode_text(rsp.data))["AuthMethod"] == "None"


def test_reflected_challenge_refused() -> None:
    cfg = TargetLoginConfig(target_name=IQN, incoming={"alice": b"alice-secret-123"},
                            outgoing=ChapCredentials("tgt", b"target-secret-456"))
    tgt = make_target(cfg)
    ini = make_initiator(IQN,
                         credentials=ChapCredentials("alice", b"alice-secret-123"))
    req = ini.start()
    rsp = tgt.receive(req, statsn=1, expcmdsn=1, maxcmdsn=1)
    req = ini.receive(rsp)
    assert req is not None
    rsp = tgt.receive(req, statsn=2, expcmdsn=1, maxcmdsn=1)
    keys = dict(decode_text(rsp.data))
    req2 = ini.receive(rsp)
    assert req2 is not None
    pairs = [*decode_text(req2.data), ("CHAP_I", "1"), ("CHAP_C", keys["CHAP_C"])]
    bad = LoginRequest(transit=True, nsg=Stage.OPERATIONAL, isid=ISID, data=encode_text(pairs))
    out = tgt.receive(bad, statsn=3, expcmdsn=1, maxcmdsn=1)
    assert (out.status_class, out.status_detail) == (2, 1)


def test_negotiation_error_type() -> None:
    assert issubclass(NegotiationError, Exception)


def test_a_challenge_issued_to_another_login_is_not_answered() -> None:
    clock = [0.0]
    recent = chap.RecentChallenges(clock=lambda: clock[0], lifetime=60)
    cfg = TargetLoginConfig(target_name=IQN, incoming={"alice": b"alice-secret-123"},
                            outgoing=ChapCredentials("tgt", b"target-secret-456"))

    def resolve(session_type: str, target: str, initiator: str) -> TargetLoginConfig:
        return cfg

    def machine() -> TargetLogin:
        return TargetLogin(portal_group_tag=1, resolve=resolve, random_bytes=os.urandom,
                           challenges=recent)

    other = machine()  # another connection's login: it issues a challenge
    first = InitiatorLogin(random_bytes=os.urandom, initiator_name=INI, target_name=IQN, isid=ISID,
                           credentials=ChapCredentials("alice", b"x"))
    rsp = other.receive(first.start(), statsn=1, expcmdsn=1, maxcmdsn=1)
    req = first.receive(rsp)
    assert req is not None
    issued = dict(decode_text(other.receive(req, statsn=2, expcmdsn=1, maxcmdsn=1).data))
    challenge = bytes.fromhex(issued["CHAP_C"][2:])
    assert challenge in recent

    # A mutual-CHAP login that sends that very challenge is refused.
    def rigged(n: int) -> bytes:
        return bytes([int(issued["CHAP_I"])]) if n == 1 else challenge

    ini = InitiatorLogin(initiator_name=INI, target_name=IQN, isid=ISID,
                         credentials=ChapCredentials("alice", b"alice-secret-123"),
                         target_credentials=ChapCredentials("tgt", b"target-secret-456"),
                         random_bytes=rigged, chap_algorithms=(int(issued["CHAP_A"]),))
    tgt = machine()
    with pytest.raises(LoginFailed, match="authentication failed"):
        run(ini, tgt)
    assert "reflection refused" in (tgt.failure or "")
    # forgotten after its lifetime, and the set stays bounded
    clock[0] = 61.0
    assert challenge not in recent
    small = chap.RecentChallenges(clock=lambda: 0.0, max_entries=10)
    for i in range(100):
        small.add(bytes([i]) * 32)
    assert len(small) == 10 and bytes([99]) * 32 in small and bytes([0]) * 32 not in small


@pytest.mark.parametrize("length", [1, 8])
def test_the_initiator_refuses_a_challenge_shorter_than_the_digest(length: int) -> None:
    # a 1-byte challenge, chosen by a fake target, is the worst case: 256 answers cover it
    cfg = TargetLoginConfig(target_name=IQN, incoming={"alice": b"alice-secret-123"})

    def resolve(session_type: str, target: str, initiator: str) -> TargetLoginConfig:
        return cfg

    tgt = TargetLogin(portal_group_tag=1, resolve=resolve,
                      random_bytes=lambda n: b"\1" * min(n, length))
    ini = InitiatorLogin(random_bytes=os.urandom, initiator_name=INI, target_name=IQN, isid=ISID,
                         credentials=ChapCredentials("alice", b"alice-secret-123"))
    with pytest.raises(AuthenticationError,
                       match=f"challenge is {length} bytes, shorter than the 32"):
        run(ini, tgt)


def test_the_session_check_can_refuse_a_login() -> None:
    seen = []

    def check(target: str, initiator: str, isid: bytes, user: str | None) -> LoginFailed | None:
        seen.append((target, initiator, isid, user))
        return LoginFailed("taken", LoginStatus.AUTHORIZATION_FAILURE)

    cfg = TargetLoginConfig(target_name=IQN, incoming={"bob": b"bob-secret-45678"})
    tgt = TargetLogin(portal_group_tag=1, resolve=lambda *a: cfg, check_session=check,
                      random_bytes=os.urandom)
    ini = InitiatorLogin(random_bytes=os.urandom, initiator_name=INI, target_name=IQN, isid=ISID,
                         credentials=ChapCredentials("bob", b"bob-secret-45678"))
    with pytest.raises(LoginFailed, match="not allowed"):
        run(ini, tgt)
    assert seen == [(IQN, INI, ISID, "bob")] and tgt.failed and not tgt.done


def test_chap_digest_lists() -> None:
    assert chap.parse_digests("SHA-256, sha1,7") == (7, 6)
    assert chap.parse_digests("8,MD5") == (8, 5)
    with pytest.raises(ValueError, match="unknown CHAP digest 'sha512'"):
        chap.parse_digests("sha512")
    with pytest.raises(ValueError, match="no CHAP digest"):
        chap.parse_digests(" , ")


def test_a_target_without_md5_refuses_an_md5_only_initiator() -> None:
    cfg = TargetLoginConfig(target_name=IQN, incoming={"alice": b"alice-secret-123"})
    tgt = TargetLogin(portal_group_tag=1, resolve=lambda *a: cfg, chap_algorithms=(7, 6),
                      random_bytes=os.urandom)
    ini = InitiatorLogin(random_bytes=os.urandom, initiator_name=INI, target_name=IQN, isid=ISID,
                         credentials=ChapCredentials("alice", b"alice-secret-123"),
                         chap_algorithms=(5,))
    with pytest.raises(LoginFailed, match="authentication failed"):
        run(ini, tgt)
