"""The PDU codec: golden bytes, round trips for every opcode, malformed input."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blockbridge.iscsi import pdu as p
from blockbridge.iscsi.constants import BHS_LENGTH, Opcode, RejectReason, Stage
from blockbridge.iscsi.errors import PDUFormatError

u32 = st.integers(0, 0xFFFFFFFF)
u16 = st.integers(0, 0xFFFF)
u8 = st.integers(0, 0xFF)
lun_field = st.integers(0, 0xFFFFFFFFFFFFFFFF)
data = st.binary(max_size=300)


def roundtrip(pdu: p.PDU) -> p.PDU:
    raw = p.encode_pdu(pdu)
    bhs = raw[:BHS_LENGTH]
    alen = p.ahs_length(bhs)
    dlen = p.data_segment_length(bhs)
    ahs = raw[BHS_LENGTH : BHS_LENGTH + alen]
    seg = raw[BHS_LENGTH + alen : BHS_LENGTH + alen + dlen]
    return p.decode_pdu(bhs, ahs, seg)


def normalised(pdu: p.PDU) -> p.PDU:
    return type(pdu).decode(pdu.encode_bhs(), pdu.ahs, bytes(pdu.data))


strategies: list[st.SearchStrategy[p.PDU]] = [
    st.builds(p.NopOut, itt=u32, data=data, ttt=u32, lun=lun_field, cmdsn=u32, expstatsn=u32,
              immediate=st.booleans()),
    st.builds(p.SCSICommand, itt=u32, data=data, lun=lun_field,
              cdb=st.binary(min_size=16, max_size=16) | st.binary(min_size=17, max_size=40),
              expected_length=u32, cmdsn=u32, expstatsn=u32, read=st.booleans(),
              write=st.booleans(), final=st.booleans(), attr=st.integers(0, 7),
              immediate=st.booleans(), bidi_read_length=st.none() | u32),
    st.builds(p.TaskManagementRequest, itt=u32, function=st.integers(0, 0x7F), lun=lun_field,
              referenced_itt=u32, cmdsn=u32, expstatsn=u32, refcmdsn=u32, expdatasn=u32),
    st.builds(p.LoginRequest, itt=u32, data=data, transit=st.just(True), cont=st.booleans(),
              csg=st.sampled_from([Stage.SECURITY, Stage.OPERATIONAL]),
              nsg=st.sampled_from(list(Stage)), version_max=u8, version_min=u8,
              isid=st.binary(min_size=6, max_size=6), tsih=u16, cid=u16, cmdsn=u32,
              expstatsn=u32),
    st.builds(p.TextRequest, itt=u32, data=data, final=st.booleans(), cont=st.booleans(),
              lun=lun_field, ttt=u32, cmdsn=u32, expstatsn=u32),
    st.builds(p.DataOut, itt=u32, data=data, final=st.booleans(), lun=lun_field, ttt=u32,
              expstatsn=u32, datasn=u32, offset=u32),
    st.builds(p.LogoutRequest, itt=u32, reason=st.integers(0, 0x7F), cid=u16, cmdsn=u32,
              expstatsn=u32),
    st.builds(p.SNACKRequest, itt=u32, snack_type=st.integers(0, 15), lun=lun_field, ttt=u32,
              expstatsn=u32, begrun=u32, runlength=u32),
    st.builds(p.NopIn, itt=u32, data=data, ttt=u32, lun=lun_field, statsn=u32, expcmdsn=u32,
              maxcmdsn=u32),
    st.builds(p.SCSIResponse, itt=u32, data=data, response=u8, status=u8, statsn=u32,
              expcmdsn=u32, maxcmdsn=u32, expdatasn=u32, residual_underflow=st.booleans(),
              residual_count=u32, bidi_residual_count=u32, snack_tag=u32),
    st.builds(p.TaskManagementResponse, itt=u32, response=u8, statsn=u32, expcmdsn=u32,
              maxcmdsn=u32),
    st.builds(p.LoginResponse, itt=u32, data=data, transit=st.booleans(), cont=st.booleans(),
              csg=st.sampled_from([Stage.SECURITY, Stage.OPERATIONAL]),
              nsg=st.sampled_from(list(Stage)), version_max=u8, version_active=u8,
              isid=st.binary(min_size=6, max_size=6), tsih=u16, statsn=u32, expcmdsn=u32,
              maxcmdsn=u32, status_class=u8, status_detail=u8),
    st.builds(p.TextResponse, itt=u32, data=data, final=st.booleans(), cont=st.booleans(),
              lun=lun_field, ttt=u32, statsn=u32, expcmdsn=u32, maxcmdsn=u32),
    st.builds(p.DataIn, itt=u32, data=data, final=st.just(True), ack=st.booleans(),
              has_status=st.booleans(), status=u8, lun=lun_field, ttt=u32, statsn=u32,
              expcmdsn=u32, maxcmdsn=u32, datasn=u32, offset=u32,
              residual_overflow=st.booleans(), residual_count=u32),
    st.builds(p.LogoutResponse, itt=u32, response=u8, statsn=u32, expcmdsn=u32, maxcmdsn=u32,
              time2wait=u16, time2retain=u16),
    st.builds(p.R2T, itt=u32, lun=lun_field, ttt=u32, statsn=u32, expcmdsn=u32, maxcmdsn=u32,
              r2tsn=u32, offset=u32, length=u32),
    st.builds(p.AsyncMessage, itt=u32, data=data, lun=lun_field, statsn=u32, expcmdsn=u32,
              maxcmdsn=u32, event=u8, vcode=u8, parameter1=u16, parameter2=u16,
              parameter3=u16),
    st.builds(p.Reject, itt=u32, data=data, reason=u8, statsn=u32, expcmdsn=u32, maxcmdsn=u32,
              datasn=u32),
]


@pytest.mark.parametrize("strategy", strategies, ids=lambda s: repr(s)[:40])
def test_every_opcode_round_trips(strategy: st.SearchStrategy[p.PDU]) -> None:
    @given(strategy)
    def check(pdu: p.PDU) -> None:
        out = roundtrip(pdu)
        assert out == normalised(pdu)
        assert type(out) is type(pdu)
        assert p.encode_pdu(out) == p.encode_pdu(pdu)

    check()


def test_every_opcode_has_a_class() -> None:
    assert set(p.PDU_CLASSES) == {int(op) for op in Opcode}


def test_login_request_golden_bytes() -> None:
    req = p.LoginRequest(
        itt=0x11223344, transit=True, csg=Stage.SECURITY, nsg=Stage.OPERATIONAL,
        isid=bytes.fromhex("400001370000"), tsih=0, cid=1, cmdsn=7, expstatsn=9, data=b"A=B\0",
    )
    bhs = req.encode_bhs()
    assert bhs[0] == 0x43  # immediate bit + opcode 0x03
    assert bhs[1] == 0x81  # T, CSG=0, NSG=1
    assert bhs[4:8] == b"\x00\x00\x00\x04"
    assert bhs[8:14] == bytes.fromhex("400001370000")
    assert bhs[16:20] == bytes.fromhex("11223344")
    assert bhs[20:22] == b"\x00\x01"
    assert struct.unpack(">II", bhs[24:32]) == (7, 9)


def test_scsi_command_flags_and_cdb() -> None:
    cmd = p.SCSICommand(itt=1, lun=p.encode_lun(3), cdb=bytes([0x28]) + bytes(9), read=True,
                        expected_length=4096, cmdsn=5)
    bhs = cmd.encode_bhs()
    assert bhs[0] == 0x01 and bhs[1] == 0x80 | 0x40 | 1
    assert bhs[8:16] == bytes([0, 3, 0, 0, 0, 0, 0, 0])
    assert bhs[32] == 0x28 and len(bhs) == 48


def test_extended_cdb_ahs() -> None:
    cdb = bytes(range(32))
    cmd = p.SCSICommand(cdb=cdb)
    assert len(cmd.ahs) % 4 == 0
    out = roundtrip(cmd)
    assert isinstance(out, p.SCSICommand) and out.cdb == cdb


def test_scsi_response_sense_accessor() -> None:
    sense = bytes([0x70, 0, 5, 0, 0, 0, 0, 10]) + bytes(10)
    rsp = p.SCSIResponse.with_sense(sense, status=2, itt=4)
    assert rsp.sense == sense
    out = roundtrip(rsp)
    assert isinstance(out, p.SCSIResponse) and out.sense == sense and out.status == 2


@pytest.mark.parametrize("lun", [0, 1, 255, 256, 1000, 16383])
def test_lun_encoding(lun: int) -> None:
    assert p.decode_lun(p.encode_lun(lun)) == lun


def test_lun_out_of_range() -> None:
    with pytest.raises(ValueError):
        p.encode_lun(16384)


def test_unknown_opcode_is_typed_error() -> None:
    bhs = bytearray(48)
    bhs[0] = 0x1E
    with pytest.raises(PDUFormatError) as info:
        p.decode_pdu(bytes(bhs))
    assert info.value.reason == RejectReason.COMMAND_NOT_SUPPORTED


def test_length_mismatches_are_rejected() -> None:
    bhs = p.NopOut(data=b"abcd").encode_bhs()
    with pytest.raises(PDUFormatError):
        p.decode_pdu(bytes(bhs), b"", b"abc")
    with pytest.raises(PDUFormatError):
        p.decode_pdu(bytes(bhs[:40]))


def test_reserved_login_stage_rejected() -> None:
    bhs = p.LoginRequest(transit=True, nsg=Stage.OPERATIONAL).encode_bhs()
    bhs[1] = 0x80 | (2 << 2) | 1
    with pytest.raises(PDUFormatError):
        p.decode_pdu(bytes(bhs))


def test_data_in_status_without_final_rejected() -> None:
    bhs = p.DataIn().encode_bhs()
    bhs[1] = 0x01
    with pytest.raises(PDUFormatError):
        p.decode_pdu(bytes(bhs))


def test_r2t_with_data_rejected() -> None:
    bhs = p.R2T().encode_bhs()
    bhs[7] = 4
    with pytest.raises(PDUFormatError):
        p.decode_pdu(bytes(bhs), b"", b"abcd")


def test_reject_carries_rejected_itt() -> None:
    rejected = p.NopOut(itt=0xABCD).encode_bhs()
    rej = p.Reject(data=bytes(rejected))
    assert rej.rejected_itt == 0xABCD
    assert p.Reject().rejected_itt is None


@given(st.binary(min_size=48, max_size=48), st.binary(max_size=64), st.binary(max_size=64))
def test_random_bytes_never_crash_the_decoder(bhs: bytes, ahs: bytes, seg: bytes) -> None:
    with contextlib.suppress(PDUFormatError):
        p.decode_pdu(bhs, ahs, seg)


@given(st.binary(max_size=200))
def test_random_ahs_never_crashes(ahs: bytes) -> None:
    with contextlib.suppress(PDUFormatError):
        p.iter_ahs(ahs)
