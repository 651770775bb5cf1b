"""iSCSI names (RFC 3720 §3.2.6, RFC 3722) and peer text escaped for the log."""

from __future__ import annotations

import os

import pytest

from blockbridge.iscsi.constants import LoginStatus
from blockbridge.iscsi.errors import LoginFailed
from blockbridge.iscsi.initiator_login import InitiatorLogin
from blockbridge.iscsi.login import TargetLogin, TargetLoginConfig
from blockbridge.iscsi.names import is_valid_name, name_problem, printable
from blockbridge.iscsi.pdu import LoginRequest
from blockbridge.iscsi.text import encode_text

VALID = [
    "iqn.2026-11.com.example:disk1",
    "iqn.2001-04.com.example",  # the unique part is optional
    "iqn.1998-01.com.vmware:esx1.example.com",
    "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test",
    "iqn.2026-11.test:host",
    "iqn.2026-11.local.blockbridge:my-host.-4f3a2b",
    "IQN.2026-11.COM.Example:Disk",  # folds to lower case (RFC 3722)
    "iqn.2026-11.de.müller:platte",  # letters of other scripts
    "eui.02004567A425678D",
    "naa.52004567BA64678D",
    "naa.62004567BA64678D0123456789ABCDEF",
]

INVALID = {
    "": "empty",
    "iqn.2026-11.test:host\n2026-11-05 INFO target: admin logged in": "'\\n'",
    "iqn.2026-11.test:\x1b[2Jhost": "'\\x1b'",
    "iqn.2026-11.test:a b": "' '",
    "iqn.2026-11.test:a/b": "'/'",
    "iqn.2026-11.test:host\u202e": "U+202E",
    "iqn.2026-13.com.example:x": "year and month",
    "iqn.26-11.com.example:x": "iqn.YYYY-MM",
    "iqn.2026-11.-bad-.example:x": "reversed domain",
    "iqn.2026-11.:x": "iqn.YYYY-MM",
    "eui.1234": "16 hexadecimal",
    "eui.02004567A425678G": "16 hexadecimal",
    "naa.52004567BA64678D01": "16 or 32",
    "host.example.com": "iqn., eui. or naa.",
    "iqn.2026-11.com.example:" + "x" * 200: "223 bytes",
}


@pytest.mark.parametrize("name", VALID)
def test_valid_names(name: str) -> None:
    assert name_problem(name) is None and is_valid_name(name)


@pytest.mark.parametrize(("name", "why"), INVALID.items())
def test_invalid_names_say_why(name: str, why: str) -> None:
    problem = name_problem(name)
    assert problem is not None and why in problem, problem


def test_printable_escapes_what_could_forge_a_line() -> None:
    assert printable("iqn.2026-11.test:host") == "iqn.2026-11.test:host"
    assert printable("a\nb\r\x1b[31mc\x00") == "a\\x0ab\\x0d\\x1b[31mc\\x00"
    assert printable("x\u2028y\u202ez\x85") == "x\\u2028y\\u202ez\\x85"
    assert printable("a" * 10, limit=4) == "aaaa…"
    assert "\n" not in printable(ValueError("one\ntwo"))


def test_the_initiator_refuses_to_send_an_invalid_name() -> None:
    with pytest.raises(LoginFailed, match=r"'bad\\x0aname' is not a valid iSCSI name") as info:
        InitiatorLogin(initiator_name="bad\nname", target_name=None, isid=bytes(6),
                       random_bytes=os.urandom)
    assert info.value.status == LoginStatus.INITIATOR_ERROR


def test_the_target_refuses_an_invalid_initiator_name_with_initiator_error() -> None:
    resolved = []

    def resolve(session_type: str, target: str, initiator: str) -> TargetLoginConfig:
        resolved.append(initiator)
        return TargetLoginConfig(target_name=target)

    tgt = TargetLogin(portal_group_tag=1, resolve=resolve, random_bytes=os.urandom)
    forged = "iqn.2026-11.test:x\n2026-11-05 12:00:00 INFO target: login accepted"
    req = LoginRequest(isid=bytes(6), data=encode_text([
        ("InitiatorName", forged), ("SessionType", "Normal"),
        ("TargetName", "iqn.2026-11.test:disk"), ("AuthMethod", "None")]))
    rsp = tgt.receive(req, statsn=1, expcmdsn=1, maxcmdsn=1)
    assert (rsp.status_class, rsp.status_detail) == (2, 0)  # 0x0200 initiator error
    assert tgt.failed and not resolved  # refused before the target is looked up
    assert tgt.failure is not None and "\n" not in tgt.failure
    assert "invalid InitiatorName 'iqn.2026-11.test:x\\x0a2026-11-05" in tgt.failure
