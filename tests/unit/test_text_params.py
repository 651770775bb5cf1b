"""key=value text and the negotiation table."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blockbridge.iscsi import chap
from blockbridge.iscsi.errors import AuthenticationError, NegotiationError
from blockbridge.iscsi.params import OUR_DEFAULTS, SessionParams, check_answer, respond
from blockbridge.iscsi.text import (
    TextAssembler,
    decode_binary,
    decode_text,
    encode_hex,
    encode_text,
)

keys = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="="),
               min_size=1, max_size=63)
values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=255)


@given(st.dictionaries(keys, values, max_size=20))
def test_text_round_trip(pairs: dict[str, str]) -> None:
    assert dict(decode_text(encode_text(pairs))) == pairs


@given(st.binary(max_size=300))
def test_random_text_raises_only_negotiation_errors(blob: bytes) -> None:
    with contextlib.suppress(NegotiationError):
        decode_text(blob)


@pytest.mark.parametrize("blob, message", [
    (b"A=B", "does not end with a NUL"),
    (b"AB\0", "without '='"),
    (b"A=1\0A=2\0", "sent twice"),
    (b"K" * 64 + b"=1\0", "bad key length"),
    (b"TargetAlias=" + b"x" * 256 + b"\0", "too long"),
    (b"\xff=1\0", "UTF-8"),
])
def test_malformed_text(blob: bytes, message: str) -> None:
    with pytest.raises(NegotiationError, match=message):
        decode_text(blob)


def test_assembler_bounds() -> None:
    asm = TextAssembler(limit=10)
    asm.add(b"12345")
    with pytest.raises(NegotiationError):
        asm.add(b"678901")


def test_binary_values() -> None:
    assert decode_binary("0x0102ff") == b"\x01\x02\xff"
    assert decode_binary("0bAQL/") == b"\x01\x02\xff"
    assert decode_binary(encode_hex(b"\xaa" * 16)) == b"\xaa" * 16
    for bad in ("0102", "0xzz", "0b!!", "0x" + "00" * 1025, "0x"):
        with pytest.raises(NegotiationError):
            decode_binary(bad)


@pytest.mark.parametrize("key, offer, ours, answer", [
    ("MaxBurstLength", "1048576", "262144", "262144"),
    ("MaxBurstLength", "4096", "262144", "4096"),
    ("DefaultTime2Wait", "1", "2", "2"),
    ("ImmediateData", "Yes", "No", "No"),
    ("InitialR2T", "No", "Yes", "Yes"),
    ("HeaderDigest", "CRC32C,None", "None,CRC32C", "CRC32C"),
    ("HeaderDigest", "CRC32C", "None", "Reject"),
    ("MaxBurstLength", "12", "262144", "Reject"),
    ("MaxBurstLength", "lots", "262144", "Reject"),
    ("ImmediateData", "Maybe", "Yes", "Reject"),
    ("X-com.example.Key", "1", "1", "NotUnderstood"),
    ("OFMarkInt", "2048", "1", "Irrelevant"),
])
def test_respond(key: str, offer: str, ours: str, answer: str) -> None:
    assert respond(key, offer, {key: ours})[0] == answer


@pytest.mark.parametrize("key, offered, answer", [
    ("MaxBurstLength", "262144", "1048576"),
    ("ImmediateData", "No", "Yes"),
    ("InitialR2T", "Yes", "No"),
    ("HeaderDigest", "None", "CRC32C"),
])
def test_check_answer_refuses_impossible_answers(key: str, offered: str, answer: str) -> None:
    with pytest.raises(NegotiationError):
        check_answer(key, offered, answer)


def test_first_burst_never_exceeds_max_burst() -> None:
    p = SessionParams.from_agreed({"MaxBurstLength": "8192", "FirstBurstLength": "65536"},
                                  our_mrdsl=8192, peer_mrdsl=8192)
    assert p.first_burst_length == 8192


def test_defaults_are_what_real_initiators_send_but_take_a_mib_in_one_pdu() -> None:
    assert OUR_DEFAULTS["MaxRecvDataSegmentLength"] == OUR_DEFAULTS["FirstBurstLength"] \
        == str(1 << 20)
    assert OUR_DEFAULTS["MaxBurstLength"] == "16776192"
    assert OUR_DEFAULTS["InitialR2T"] == "No" and OUR_DEFAULTS["ImmediateData"] == "Yes"


def test_chap_vectors_and_checks() -> None:
    # RFC 1994 construction: MD5(identifier || secret || challenge)
    import hashlib

    r = chap.response(5, 7, b"secret", b"\x01\x02")
    assert r == hashlib.md5(b"\x07secret\x01\x02").digest()
    assert chap.verify(5, 7, b"secret", b"\x01\x02", r)
    assert not chap.verify(5, 7, b"secreT", b"\x01\x02", r)
    assert chap.choose_algorithm("7,6,5") == 7
    assert chap.choose_algorithm("99,5") == 5
    assert chap.choose_algorithm("1,2") is None
    assert [chap.digest_size(a) for a in (5, 6, 7, 8)] == [16, 20, 32, 32]
    with pytest.raises(AuthenticationError):
        chap.parse_identifier("256")
    with pytest.raises(AuthenticationError):
        chap.parse_response("0x" + "00" * 15, 5)
    assert chap.weak_secret(b"short") and not chap.weak_secret(b"long-enough-secret")
