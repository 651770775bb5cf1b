"""The target's full-feature machine, without sockets: golden PDUs in and out, and a
simulated initiator driving it through random command mixes (hypothesis)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockbridge.iscsi import pdu as P
from blockbridge.iscsi import target_events as E
from blockbridge.iscsi.constants import (
    RESERVED_TAG,
    LogoutResponseCode,
    RejectReason,
    TaskFunction,
    TaskResponse,
)
from blockbridge.iscsi.errors import MachineStopped, ProtocolError
from blockbridge.iscsi.params import SessionParams
from blockbridge.iscsi.serial import sn_add, sn_lt
from blockbridge.iscsi.target_connection import TargetConnection
from blockbridge.iscsi.text import decode_text
from blockbridge.iscsi.window import Admission, CommandWindow


def read10(n: int) -> bytes:
    return bytes([0x28, 0, 0, 0, 0, 0, 0]) + n.to_bytes(2, "big") + b"\0"


def write10(n: int) -> bytes:
    return bytes([0x2A, 0, 0, 0, 0, 0, 0]) + n.to_bytes(2, "big") + b"\0"


def machine(depth: int = 4, **params: object) -> TargetConnection:
    return TargetConnection(SessionParams(**params),  # type: ignore[arg-type]
                            expcmdsn=1, depth=depth, statsn=100)


def read(itt: int, cmdsn: int, edtl: int, **kw: object) -> P.SCSICommand:
    return P.SCSICommand(itt=itt, cmdsn=cmdsn, cdb=read10(edtl // 512), expected_length=edtl,
                         read=True, **kw)  # type: ignore[arg-type]


def write(itt: int, cmdsn: int, edtl: int, data: bytes = b"", **kw: object) -> P.SCSICommand:
    return P.SCSICommand(itt=itt, cmdsn=cmdsn, cdb=write10(edtl // 512), expected_length=edtl,
                         write=True, data=data, **kw)  # type: ignore[arg-type]


def only(events: list[E.Event], kind: type) -> list[E.Event]:
    return [e for e in events if isinstance(e, kind)]


def sent(events: list[E.Event]) -> list[P.PDU]:
    return [p for e in events if isinstance(e, E.Send) for p in e.pdus]  # type: ignore[misc]


# ------------------------------------------------------------------ golden exchanges


def test_a_read_is_answered_in_segments_with_the_status_in_the_last() -> None:
    m = machine(max_xmit_data_segment_length=4096)
    [ev] = m.receive(read(7, 1, 10240), now=0)
    assert isinstance(ev, E.CommandReceived) and ev.complete and not ev.unasked
    pdus = m.respond(7, 0, bytes(range(256)) * 40)
    assert [type(p) for p in pdus] == [P.DataIn] * 3
    assert [(p.offset, len(p.data), p.datasn, p.final) for p in pdus] == [  # type: ignore[union-attr]
        (0, 4096, 0, False), (4096, 4096, 1, False), (8192, 2048, 2, True)]
    last = pdus[-1]
    assert isinstance(last, P.DataIn) and last.has_status and last.statsn == 100
    assert not last.residual_underflow and not last.residual_overflow
    assert not any(p.has_status for p in pdus[:-1])  # type: ignore[union-attr]
    assert (last.expcmdsn, last.maxcmdsn) == (2, 5)
    assert m.statsn == 101 and not m.busy


def test_short_and_long_reads_carry_their_residuals() -> None:
    m = machine()
    m.receive(read(1, 1, 4096), now=0)
    [short] = m.respond(1, 0, b"x" * 1024)
    assert isinstance(short, P.DataIn) and short.residual_underflow
    assert short.residual_count == 3072
    m.receive(read(2, 2, 512), now=0)
    [long] = m.respond(2, 0, b"y" * 2048)
    assert isinstance(long, P.DataIn) and long.residual_overflow
    assert long.residual_count == 1536 and bytes(long.data) == b"y" * 512


def test_a_check_condition_comes_in_a_response_with_sense_after_the_data() -> None:
    m = machine()
    m.receive(read(3, 1, 1024), now=0)
    data_in, rsp = m.respond(3, 0x02, b"z" * 1024, sense=b"\x70" + bytes(17))
    assert isinstance(data_in, P.DataIn) and not data_in.has_status
    assert isinstance(rsp, P.SCSIResponse) and rsp.status == 0x02 and rsp.expdatasn == 1
    assert rsp.sense == b"\x70" + bytes(17) and rsp.statsn == 100


def test_a_write_residual_follows_what_the_cdb_transfers() -> None:
    m = machine()
    m.receive(write(4, 1, 1024, b"a" * 1024), now=0)
    [rsp] = m.respond(4, 0, written=4096)
    assert isinstance(rsp, P.SCSIResponse) and rsp.residual_overflow
    assert rsp.residual_count == 3072


def test_a_write_is_solicited_burst_by_burst() -> None:
    m = machine(immediate_data=True, initial_r2t=True, first_burst_length=1024,
                max_burst_length=2048)
    [ev] = m.receive(write(5, 1, 5120, b"i" * 1024), now=0)
    assert isinstance(ev, E.CommandReceived) and not ev.complete and ev.unasked
    assert m.get_timer() is None  # nothing is timed before the shell asks for the data
    [r2t] = sent(m.solicit(5, now=1))
    assert isinstance(r2t, P.R2T) and (r2t.offset, r2t.length, r2t.r2tsn) == (1024, 2048, 0)
    assert r2t.statsn == 100 and m.statsn == 100  # an R2T carries StatSN, takes none
    assert m.get_timer() == 31
    first = P.DataOut(itt=5, ttt=r2t.ttt, offset=1024, datasn=0, final=False, data=b"b" * 1024)
    assert m.receive(first, now=2) == []
    events = m.receive(P.DataOut(itt=5, ttt=r2t.ttt, offset=2048, datasn=1, final=True,
                                 data=b"c" * 1024), now=3)
    [r2t2] = sent(events)
    assert isinstance(r2t2, P.R2T) and (r2t2.offset, r2t2.length, r2t2.r2tsn) == (3072, 2048, 1)
    events = m.receive(P.DataOut(itt=5, ttt=r2t2.ttt, offset=3072, final=True,
                                 data=b"d" * 2048), now=4)
    [done] = only(events, E.DataReceived)
    assert isinstance(done, E.DataReceived)
    assert bytes(done.data) == b"i" * 1024 + b"b" * 1024 + b"c" * 1024 + b"d" * 2048


def test_unsolicited_data_then_r2t_for_the_rest() -> None:
    m = machine(immediate_data=False, initial_r2t=False, first_burst_length=2048)
    [ev] = m.receive(write(6, 1, 4096, final=False), now=0)
    assert isinstance(ev, E.CommandReceived) and ev.unasked and not ev.complete
    assert m.solicit(6, now=0) == []  # the unsolicited data is not over yet
    events = m.receive(P.DataOut(itt=6, offset=0, final=True, data=b"u" * 2048), now=1)
    [r2t] = sent(events)
    assert isinstance(r2t, P.R2T) and (r2t.offset, r2t.length) == (2048, 2048)


@pytest.mark.parametrize("bad", [
    P.DataOut(itt=6, offset=512, final=True, data=b"x" * 512),  # a gap
    P.DataOut(itt=6, offset=0, datasn=1, final=True, data=b"x" * 2048),  # DataSN
    P.DataOut(itt=6, offset=0, final=True, data=b"x" * 512),  # ends early
    P.DataOut(itt=6, offset=0, final=True, data=b"x" * 4096),  # beyond FirstBurstLength
    P.DataOut(itt=6, ttt=9, offset=0, final=True, data=b"x" * 512),  # no such R2T
])
def test_data_out_the_rfc_does_not_allow_stops_the_machine(bad: P.DataOut) -> None:
    m = machine(immediate_data=False, initial_r2t=False, first_burst_length=2048)
    m.receive(write(6, 1, 4096, final=False), now=0)
    with pytest.raises(ProtocolError) as failed:
        m.receive(bad, now=1)
    assert failed.value.reason == RejectReason.PROTOCOL_ERROR
    assert m.state is E.State.FAILED
    with pytest.raises(MachineStopped):
        m.receive(P.NopOut(itt=1, immediate=True), now=2)


def test_data_out_out_of_order_stops_the_machine_though_it_adds_up() -> None:
    m = machine(immediate_data=False, initial_r2t=False, first_burst_length=2048)
    m.receive(write(6, 1, 2048, final=False), now=0)
    with pytest.raises(ProtocolError, match="offset 1024, expected 0"):
        m.receive(P.DataOut(itt=6, offset=1024, datasn=0, final=False, data=b"b" * 1024),
                  now=0)


def test_immediate_data_rules() -> None:
    with pytest.raises(ProtocolError, match="unexpected immediate data"):
        machine(immediate_data=False).receive(write(1, 1, 1024, b"x" * 512), now=0)
    with pytest.raises(ProtocolError, match="FirstBurstLength"):
        machine(first_burst_length=512).receive(write(1, 1, 2048, b"x" * 1024), now=0)
    with pytest.raises(ProtocolError, match="unexpected immediate data"):
        machine().receive(read(1, 1, 512, data=b"x"), now=0)


def test_a_task_tag_in_use_stops_the_machine() -> None:
    m = machine()
    m.receive(read(9, 1, 512), now=0)
    with pytest.raises(ProtocolError, match="reused"):
        m.receive(read(9, 2, 512), now=0)


def test_commands_ahead_of_their_turn_wait_and_run_in_order() -> None:
    m = machine(depth=8)
    assert m.receive(read(3, 3, 512), now=0) == []
    assert m.receive(read(2, 2, 512), now=0) == []
    events = m.receive(read(1, 1, 512), now=0)
    assert [e.itt for e in events] == [1, 2, 3]  # type: ignore[attr-defined]
    assert m.window.expcmdsn == 4
    # outside the window: dropped, the window unchanged
    [dropped] = m.receive(read(4, 99, 512), now=0)
    assert isinstance(dropped, E.CommandDropped) and dropped.expcmdsn == 4


def test_a_nop_out_takes_its_turn_and_frees_the_commands_held_behind_it() -> None:
    m = machine()
    assert m.receive(read(2, 2, 512), now=0) == []
    events = m.receive(P.NopOut(itt=1, cmdsn=1, immediate=False, data=b"ping"), now=0)
    [answer] = sent(events)
    assert isinstance(answer, P.NopIn) and bytes(answer.data) == b"ping" and answer.statsn == 100
    assert [e.itt for e in only(events, E.CommandReceived)] == [2]  # type: ignore[attr-defined]


def test_an_immediate_command_finds_no_room_in_a_full_task_set() -> None:
    m = machine(depth=1)
    m.receive(read(1, 1, 512), now=0)
    [refusal] = m.receive(read(2, 2, 512, immediate=True), now=0)
    assert isinstance(refusal, E.Send)
    [rsp] = refusal.pdus
    assert isinstance(rsp, P.SCSIResponse) and rsp.status == 0x28 and rsp.itt == 2
    assert m.tasks() == [1]


def test_immediate_data_is_placed_and_a_held_command_keeps_only_its_data() -> None:
    pool: list[bytearray] = []
    given: list[bytearray] = []
    m = TargetConnection(SessionParams(), expcmdsn=1, depth=4, statsn=1,
                         take_buffer=lambda n: pool.append(bytearray(n)) or pool[-1],
                         give_buffer=given.append)
    later = write(2, 2, 8192, b"L" * 4096)
    bhs = bytes(later.encode_bhs())
    bhs = bhs[:5] + (4096).to_bytes(3, "big") + bhs[8:]
    place = m.place(bhs)
    assert place is not None and place.nbytes == 4096 and len(pool[0]) == 8192
    place[:] = b"L" * 4096
    assert m.receive(replace(later, data=place), now=0) == []
    assert given == [pool[0]]  # the big buffer went back; the held command keeps bytes
    [ev] = [e for e in m.receive(write(1, 1, 512, b"f" * 512), now=0)
            if isinstance(e, E.CommandReceived) and e.itt == 2]
    assert isinstance(ev, E.CommandReceived) and type(ev.data) is bytes


def test_no_buffer_is_taken_before_the_shell_reserved_its_budget() -> None:
    """A WRITE announcing 4 GiB with a little immediate data: the shell refuses it (BUSY,
    or the unit's limits) before any buffer exists."""
    taken: list[int] = []
    m = TargetConnection(SessionParams(first_burst_length=1 << 20), expcmdsn=1, depth=4,
                         statsn=1, take_buffer=lambda n: taken.append(n) or bytearray(n))
    huge = replace(write(1, 1, 4096, b"x" * 512), expected_length=2**32 - 512)
    [ev] = m.receive(huge, now=0)
    assert isinstance(ev, E.CommandReceived) and not ev.complete and taken == []
    m.respond(1, 0x08)  # BUSY
    assert taken == [] and not m.busy
    m.receive(write(2, 2, 4096, b"y" * 512), now=0)
    [r2t] = sent(m.solicit(2, now=0))
    assert taken == [] and isinstance(r2t, P.R2T)
    [done] = m.receive(P.DataOut(itt=2, ttt=r2t.ttt, offset=512, final=True,
                                 data=b"z" * 3584), now=0)
    assert taken == [4096] and isinstance(done, E.DataReceived)
    assert bytes(done.data) == b"y" * 512 + b"z" * 3584


def test_data_out_is_placed_in_the_commands_buffer_at_its_offset_once() -> None:
    m = machine(immediate_data=True, first_burst_length=1024, max_burst_length=1 << 20)
    m.receive(write(5, 1, 4096, b"i" * 1024), now=0)
    [r2t] = sent(m.solicit(5, now=0))
    assert isinstance(r2t, P.R2T)
    out = P.DataOut(itt=5, ttt=r2t.ttt, offset=1024, final=True, data=b"")
    bhs = bytearray(out.encode_bhs())
    bhs[5:8] = (3072).to_bytes(3, "big")
    place = m.place(bytes(bhs))
    assert place is not None and place.nbytes == 3072
    place[:] = b"p" * 3072
    wrong = bytearray(bhs)
    wrong[40:44] = (2048).to_bytes(4, "big")
    assert m.place(bytes(wrong)) is None  # not where the data continues: the usual way
    [done] = m.receive(P.DataOut(itt=5, ttt=r2t.ttt, offset=1024, final=True, data=place),
                       now=1)
    assert isinstance(done, E.DataReceived) and done.data.obj is place.obj
    assert bytes(done.data) == b"i" * 1024 + b"p" * 3072


def test_data_out_that_stops_coming_times_out() -> None:
    m = TargetConnection(SessionParams(), expcmdsn=1, depth=4, statsn=1, data_out_timeout=5)
    m.receive(write(5, 1, 4096, b"i" * 512), now=0)
    sent(m.solicit(5, now=10))
    assert m.get_timer() == 15
    assert m.handle_timer(14.9) == []
    [late] = m.handle_timer(15)
    assert late == E.DataTimedOut(5, 512, 4096)
    assert m.receive(P.DataOut(itt=5, ttt=RESERVED_TAG, offset=512, data=b"x"), now=16) == []
    [rsp] = m.respond(5, 0x02, sense=b"\x70" + bytes(17))
    assert isinstance(rsp, P.SCSIResponse)


def test_nop_in_pings_and_a_silent_peer() -> None:
    m = TargetConnection(SessionParams(), expcmdsn=1, depth=4, statsn=1, nop_interval=10,
                         nop_timeout=3)
    assert m.get_timer() == 10
    [ping] = sent(m.handle_timer(10))
    assert isinstance(ping, P.NopIn) and ping.itt == RESERVED_TAG and ping.ttt != RESERVED_TAG
    assert m.statsn == 1 and m.get_timer() == 13
    m.receive(P.NopOut(itt=RESERVED_TAG, ttt=ping.ttt, immediate=True), now=12)
    assert m.get_timer() == 22
    [ping2] = sent(m.handle_timer(22))
    assert isinstance(ping2, P.NopIn) and ping2.ttt != ping.ttt
    assert [type(e) for e in m.handle_timer(25)] == [E.PeerSilent]


def test_a_long_send_targets_answer_continues_over_several_text_responses() -> None:
    m = machine(max_xmit_data_segment_length=1024)
    [ask] = m.receive(P.TextRequest(itt=3, data=b"SendTargets=All\0"), now=0)
    assert isinstance(ask, E.TextRequested) and ask.pairs == (("SendTargets", "All"),)
    pairs = [(k, v) for i in range(300) for k, v in
             (("TargetName", f"iqn.2026-12.test:target-{i:03d}"),
              ("TargetAddress", "127.0.0.1:3260,1"))]
    [first] = m.text_answer(3, pairs)
    parts = [first]
    while not parts[-1].final:  # type: ignore[attr-defined]
        last = parts[-1]
        assert isinstance(last, P.TextResponse) and last.ttt != RESERVED_TAG
        assert len(last.data) == 1024
        [nxt] = sent(m.receive(P.TextRequest(itt=3, ttt=last.ttt), now=0))
        parts.append(nxt)
    assert len(parts) > 10
    final = parts[-1]
    assert isinstance(final, P.TextResponse) and final.ttt == RESERVED_TAG
    text = b"".join(bytes(p.data) for p in parts)
    assert decode_text(text, allow_duplicates=True) == pairs
    statsns = [p.statsn for p in parts]  # type: ignore[attr-defined]
    assert statsns == list(range(100, 100 + len(parts)))


def test_a_short_text_answer_is_one_final_response() -> None:
    m = machine()
    m.receive(P.TextRequest(itt=3, data=b"SendTargets=All\0"), now=0)
    [only_one] = m.text_answer(3, [("TargetName", "iqn.2026-12.test:t")])
    assert isinstance(only_one, P.TextResponse) and only_one.final
    assert only_one.ttt == RESERVED_TAG and not only_one.cont


def test_task_management_aborts_and_their_data_out_is_ignored() -> None:
    m = machine(first_burst_length=512)
    m.receive(write(1, 1, 2048, b"x" * 512), now=0)
    m.receive(read(2, 2, 512, lun=P.encode_lun(1)), now=0)
    [tmf] = m.receive(P.TaskManagementRequest(itt=9, function=TaskFunction.ABORT_TASK,
                                              referenced_itt=1, immediate=True), now=0)
    assert isinstance(tmf, E.TaskManagement) and tmf.abort == (1,)
    assert tmf.response == TaskResponse.COMPLETE
    m.abort(tmf.abort)
    assert m.receive(P.DataOut(itt=1, offset=512, data=b"y" * 512), now=0) == []
    m.discard(1)
    [missing] = m.receive(P.TaskManagementRequest(itt=10, function=TaskFunction.ABORT_TASK,
                                                  referenced_itt=1, immediate=True), now=0)
    assert isinstance(missing, E.TaskManagement)
    assert missing.response == TaskResponse.TASK_DOES_NOT_EXIST
    [reset] = m.receive(P.TaskManagementRequest(
        itt=11, function=TaskFunction.LOGICAL_UNIT_RESET, lun=P.encode_lun(1),
        immediate=True), now=0)
    assert isinstance(reset, E.TaskManagement) and reset.abort == (2,) and reset.lun == 1
    rsp = m.tmf_response(11, reset.response)
    assert isinstance(rsp, P.TaskManagementResponse) and rsp.statsn == 100


def test_logout_ends_the_machine() -> None:
    m = machine()
    [ev] = m.receive(P.LogoutRequest(itt=4, cmdsn=1, immediate=False), now=0)
    assert isinstance(ev, E.LogoutRequested)
    rsp = m.logout_response(4, ev.reason)
    assert isinstance(rsp, P.LogoutResponse) and rsp.response == LogoutResponseCode.SUCCESS
    assert rsp.expcmdsn == 2 and m.get_timer() is None
    with pytest.raises(MachineStopped):
        m.receive(read(1, 2, 512), now=0)


def test_a_login_request_in_full_feature_phase_is_rejected_then_fatal() -> None:
    m = machine()
    login = P.LoginRequest(itt=1)
    with pytest.raises(ProtocolError) as failed:
        m.receive(login, now=0)
    assert failed.value.reject
    reject = m.error_reject(login, failed.value)
    assert isinstance(reject, P.Reject) and reject.reason == RejectReason.PROTOCOL_ERROR


def test_an_unknown_request_is_rejected_and_the_machine_goes_on() -> None:
    m = machine()
    [reject] = sent(m.receive(P.SNACKRequest(itt=1), now=0))
    assert isinstance(reject, P.Reject) and reject.reason == RejectReason.COMMAND_NOT_SUPPORTED
    assert m.state is E.State.FULL_FEATURE


def test_a_discovery_session_rejects_scsi_commands() -> None:
    m = TargetConnection(SessionParams(), expcmdsn=1, depth=4, statsn=1, discovery=True)
    [reject] = sent(m.receive(read(1, 1, 512), now=0))
    assert isinstance(reject, P.Reject) and reject.reason == RejectReason.PROTOCOL_ERROR


def test_the_command_window_classifies_by_enum() -> None:
    w = CommandWindow(expcmdsn=0xFFFFFFFF, depth=3)
    assert w.classify(0xFFFFFFFF) is Admission.NOW
    assert w.classify(0) is Admission.LATER and w.classify(1) is Admission.LATER
    assert w.classify(2) is Admission.DROP and w.classify(0xFFFFFFFE) is Admission.DROP



def test_a_command_past_the_offered_window_is_dropped_even_when_it_is_next() -> None:
    m = machine(depth=1)  # MaxCmdSN offered: 1
    assert only(m.receive(read(1, 1, 512), 0.0), E.CommandReceived)
    # the window is closed (MaxCmdSN 1 < ExpCmdSN 2): CmdSN 2 was never offered
    dropped = m.receive(read(2, 2, 512), 0.0)
    assert dropped == [E.CommandDropped(2, 2, 1)]
    answer = m.respond(1, 0, bytes(512))
    assert answer[-1].maxcmdsn == 2  # type: ignore[union-attr]  # room again
    assert only(m.receive(read(2, 2, 512), 0.0), E.CommandReceived)


# ------------------------------------------------------------------ random command mixes


@dataclass
class Cmd:
    itt: int
    write: bool
    edtl: int
    payload: bytes = b""  # a write's data
    produced: int = 0  # what a read's unit returns
    answers: list[P.PDU] = field(default_factory=list)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[SessionParams, int, list[Cmd], int]:
    immediate = draw(st.booleans())
    initial_r2t = draw(st.booleans())
    mx = draw(st.sampled_from([512, 1024, 4096, 8192]))
    fbl = draw(st.sampled_from([512, 1024, 4096, 16384]))
    mbl = draw(st.sampled_from([fbl, 2 * fbl, 65536]))
    params = SessionParams(immediate_data=immediate, initial_r2t=initial_r2t,
                           first_burst_length=fbl, max_burst_length=mbl,
                           max_xmit_data_segment_length=mx, max_recv_data_segment_length=mx)
    depth = draw(st.integers(1, 8))
    cmds = []
    for i in range(draw(st.integers(1, 12))):
        edtl = draw(st.integers(0, 24)) * 512
        if draw(st.booleans()):
            cmds.append(Cmd(i + 1, True, edtl, payload=random.Random(i).randbytes(edtl)))
        else:
            cmds.append(Cmd(i + 1, False, edtl,
                            produced=max(0, edtl + draw(st.sampled_from([0, 0, -512, 512])))))
    return params, depth, cmds, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.data())
def test_random_command_mixes_keep_the_invariants(
        scenario: tuple[SessionParams, int, list[Cmd], int], data: st.DataObject) -> None:
    params, depth, cmds, start = scenario
    m = TargetConnection(params, expcmdsn=start, depth=depth, statsn=7)
    by_itt = {c.itt: c for c in cmds}
    unsent = list(cmds)
    cmdsn, maxcmdsn = start, sn_add(start, depth - 1)
    streams: dict[int, list[P.PDU]] = {}  # Data-Out each task still has to send, in order
    runnable: list[int] = []  # commands the shell may finish, in any order
    placed: dict[int, bytes] = {}
    statsns: list[int] = []
    expcmdsns: list[int] = [start]

    def take(events: list[E.Event]) -> None:
        for ev in events:
            if isinstance(ev, E.CommandReceived):
                c = by_itt[ev.itt]
                if ev.complete:
                    if c.write:
                        placed[c.itt] = bytes(ev.data)
                    runnable.append(c.itt)
                else:
                    take(m.solicit(ev.itt, now=0))
            elif isinstance(ev, E.DataReceived):
                assert ev.itt not in placed, "data placed twice"
                placed[ev.itt] = bytes(ev.data)
                runnable.append(ev.itt)
            elif isinstance(ev, E.Send):
                for pdu in ev.pdus:
                    assert isinstance(pdu, P.R2T)
                    c = by_itt[pdu.itt]
                    streams.setdefault(pdu.itt, []).extend(
                        P.DataOut(itt=pdu.itt, ttt=pdu.ttt, datasn=i, offset=off, final=last,
                                  data=c.payload[off : off + n])
                        for i, (off, n, last) in enumerate(_cut(pdu.offset, pdu.length, params)))
            else:
                raise AssertionError(f"unexpected {ev}")

    def answered(pdus: list[P.PDU]) -> None:
        nonlocal maxcmdsn
        for pdu in pdus:
            c = by_itt[pdu.itt]
            c.answers.append(pdu)
            if isinstance(pdu, P.SCSIResponse) or (isinstance(pdu, P.DataIn) and pdu.has_status):
                statsns.append(pdu.statsn)
            assert not sn_lt(pdu.expcmdsn, expcmdsns[-1])  # type: ignore[attr-defined]
            expcmdsns.append(pdu.expcmdsn)  # type: ignore[attr-defined]
            if sn_lt(maxcmdsn, pdu.maxcmdsn):  # type: ignore[attr-defined]
                maxcmdsn = pdu.maxcmdsn  # type: ignore[attr-defined]

    while unsent or streams or runnable:
        choices = []
        if unsent and not sn_lt(maxcmdsn, cmdsn):
            choices.append("command")
        choices += [f"data {itt}" for itt in streams]
        choices += ["finish"] if runnable else []
        assert choices, "deadlock: nothing to send and nothing to finish"
        choice = data.draw(st.sampled_from(choices))
        if choice == "command":
            c = unsent.pop(0)
            imm = min(len(c.payload), params.first_burst_length,
                      params.max_xmit_data_segment_length) if params.immediate_data else 0
            unsolicited_end = min(params.first_burst_length, c.edtl) \
                if c.write and not params.initial_r2t else imm
            final = not (c.write and unsolicited_end > imm)
            pdu = P.SCSICommand(itt=c.itt, cmdsn=cmdsn, expected_length=c.edtl,
                                cdb=(write10 if c.write else read10)(c.edtl // 512),
                                read=not c.write, write=c.write, final=final,
                                data=c.payload[:imm])
            cmdsn = sn_add(cmdsn, 1)
            if not final:
                streams[c.itt] = [
                    P.DataOut(itt=c.itt, datasn=i, offset=off, final=last,
                              data=c.payload[off : off + n])
                    for i, (off, n, last) in enumerate(
                        _cut(imm, unsolicited_end - imm, params))]
            take(m.receive(pdu, now=0))
        elif choice == "finish":
            itt = runnable.pop(data.draw(st.integers(0, len(runnable) - 1)))
            c = by_itt[itt]
            result = b"r" * c.produced
            answered([p for p in m.respond(itt, 0, result)  # type: ignore[misc]
                      if isinstance(p, P.PDU)])
        else:
            itt = int(choice.split()[1])
            pdu = streams[itt].pop(0)
            if not streams[itt]:
                del streams[itt]
            take(m.receive(pdu, now=0))

    assert not m.busy and m.window.in_flight == 0
    assert statsns == [sn_add(7, i) for i in range(len(cmds))]  # one status each, in order
    for c in cmds:
        status = [p for p in c.answers if isinstance(p, P.SCSIResponse)
                  or (isinstance(p, P.DataIn) and p.has_status)]
        assert len(status) == 1, f"command {c.itt} answered {len(status)} times"
        last = status[0]
        if c.write:
            assert placed[c.itt] == c.payload, "write data not placed exactly once, whole"
            continue
        data_in = [p for p in c.answers if isinstance(p, P.DataIn)]
        assert b"".join(bytes(p.data) for p in data_in) == b"r" * min(c.produced, c.edtl)
        assert [p.datasn for p in data_in] == list(range(len(data_in)))
        assert all(len(p.data) <= params.max_xmit_data_segment_length for p in data_in)
        over, under = c.produced > c.edtl, c.produced < c.edtl
        assert (last.residual_overflow, last.residual_underflow) == (over, under)  # type: ignore[attr-defined]
        assert last.residual_count == abs(c.produced - c.edtl)  # type: ignore[attr-defined]


def _cut(offset: int, length: int, params: SessionParams) -> list[tuple[int, int, bool]]:
    from blockbridge.iscsi.segments import segments

    return list(segments(offset, offset + length, params.max_recv_data_segment_length))
