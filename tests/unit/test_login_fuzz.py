"""Hostile input to the target's login machine: always a response or a typed error."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from blockbridge.iscsi.constants import LoginStatus, Stage
from blockbridge.iscsi.errors import ISCSIError
from blockbridge.iscsi.login import ChapCredentials, TargetLogin, TargetLoginConfig
from blockbridge.iscsi.pdu import LoginRequest, LoginResponse
from blockbridge.iscsi.text import encode_text

IQN = "iqn.2026-11.test:fuzz"
KEYS = ["InitiatorName", "TargetName", "SessionType", "AuthMethod", "CHAP_A", "CHAP_N",
        "CHAP_R", "CHAP_I", "CHAP_C", "HeaderDigest", "MaxBurstLength", "ImmediateData",
        "MaxRecvDataSegmentLength", "X-junk", "FirstBurstLength", "ErrorRecoveryLevel"]
VALUES = st.one_of(st.sampled_from(["None", "CHAP", "CHAP,None", "5", "7,6,5", "Yes", "No",
                                    "CRC32C", "0", "262144", IQN, "Discovery", "Normal",
                                    "0x00", "0b", "alice", "-1", "99999999999"]),
                   st.text(max_size=40))


def resolve(session_type: str, target: str, initiator: str) -> TargetLoginConfig | LoginStatus:
    if session_type == "Discovery" or target == IQN:
        return TargetLoginConfig(target_name=IQN, incoming={"alice": b"alice-secret-123"},
                                 outgoing=ChapCredentials("tgt", b"target-secret-456"))
    return LoginStatus.NOT_FOUND


requests = st.builds(
    LoginRequest,
    transit=st.booleans(), cont=st.booleans(),
    csg=st.sampled_from([Stage.SECURITY, Stage.OPERATIONAL]),
    nsg=st.sampled_from(list(Stage)), version_min=st.integers(0, 2),
    isid=st.just(b"\x80\0\0\0\0\1"), tsih=st.integers(0, 2),
    data=st.one_of(st.binary(max_size=100),
                   st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=8)
                   .map(encode_text)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(requests, min_size=1, max_size=6))
def test_login_machine_never_crashes(reqs: list[LoginRequest]) -> None:
    machine = TargetLogin(portal_group_tag=1, resolve=resolve, random_bytes=lambda n: b"\7" * n)
    for req in reqs:
        if machine.done or machine.failed:
            break
        try:
            rsp = machine.receive(req, statsn=1, expcmdsn=1, maxcmdsn=2)
        except ISCSIError:
            break
        assert isinstance(rsp, LoginResponse)
        if rsp.status_class:
            assert machine.failed
