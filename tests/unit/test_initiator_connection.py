"""The initiator's full-feature machine against target PDUs written by hand: every rule
without a socket, a task or a clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockbridge.iscsi import pdu as P
from blockbridge.iscsi.constants import RESERVED_TAG, Opcode
from blockbridge.iscsi.framing import encode_buffers
from blockbridge.iscsi.initiator_connection import (
    Closed,
    CommandDone,
    ConnectionError_,
    InitiatorConnection,
    PeerSilent,
    Rejected,
    RequestDone,
    TextDone,
)
from blockbridge.iscsi.params import SessionParams
from blockbridge.iscsi.text import encode_text

PARAMS = SessionParams(max_xmit_data_segment_length=8192, max_recv_data_segment_length=8192,
                       max_burst_length=65536, first_burst_length=16384, initial_r2t=False,
                       immediate_data=True)


def machine(params: SessionParams = PARAMS, *, window: int = 32, **kw: object
            ) -> InitiatorConnection:
    return InitiatorConnection(params, cmdsn=1, expcmdsn=1, maxcmdsn=window, statsn=0,
                               **kw)  # type: ignore[arg-type]


def data_in(itt: int, offset: int, data: bytes, *, status: bool = False, statsn: int = 0,
            expcmdsn: int = 1, maxcmdsn: int = 32, residual: int = 0,
            underflow: bool = False) -> P.DataIn:
    return P.DataIn(itt=itt, offset=offset, data=data, final=status, has_status=status,
                    statsn=statsn, expcmdsn=expcmdsn, maxcmdsn=maxcmdsn,
                    residual_count=residual, residual_underflow=underflow)


def test_a_read_is_numbered_and_its_data_placed() -> None:
    m = machine()
    buf = bytearray(8192)
    itt, pdus = m.submit(0, b"\x28" + bytes(9), read_length=8192, read_into=buf)
    [cmd] = pdus
    assert isinstance(cmd, P.SCSICommand)
    assert (cmd.cmdsn, cmd.read, cmd.write, cmd.expected_length) == (1, True, False, 8192)
    assert m.cmdsn == 2
    assert m.receive(data_in(itt, 0, b"a" * 4096), 0.0) is None
    done = m.receive(data_in(itt, 4096, b"b" * 4096, status=True, statsn=0, expcmdsn=2), 0.0)
    assert isinstance(done, CommandDone) and done.itt == itt
    assert done.response.data is buf and bytes(buf) == b"a" * 4096 + b"b" * 4096
    assert (done.response.received, done.response.status) == (8192, 0)
    assert m.expstatsn == 1 and m.expcmdsn == 2 and m.outstanding == 0


def test_the_placement_is_the_commands_buffer_at_the_pdus_offset() -> None:
    m = machine()
    buf = bytearray(8192)
    itt, _ = m.submit(0, b"\x28" + bytes(9), read_length=8192, read_into=buf)
    bhs = encode_buffers(data_in(itt, 4096, b"x" * 4096))[0][:48]
    place = m.placement(bytes(bhs))
    assert place is not None and place.obj is buf and place.nbytes == 4096
    place[:] = b"x" * 4096
    done = m.receive(data_in(itt, 4096, place, status=True), 0.0)  # type: ignore[arg-type]
    assert isinstance(done, CommandDone) and bytes(buf[4096:]) == b"x" * 4096
    too_far = encode_buffers(data_in(itt, 8192, b"y" * 4096))[0][:48]
    assert m.placement(bytes(too_far)) is None  # refused by receive instead


def test_data_beyond_the_expected_length_stops_the_machine() -> None:
    m = machine()
    itt, _ = m.submit(0, b"\x28" + bytes(9), read_length=4096)
    with pytest.raises(ConnectionError_, match="beyond"):
        m.receive(data_in(itt, 4096, b"z" * 512), 0.0)
    with pytest.raises(Closed):
        m.submit(0, b"\x00" * 6)


def test_residuals_and_sense_reach_the_response() -> None:
    m = machine()
    itt, _ = m.submit(0, b"\x12" + bytes(5), read_length=96)
    done = m.receive(data_in(itt, 0, b"i" * 36, status=True, residual=60, underflow=True), 0.0)
    assert isinstance(done, CommandDone)
    assert (done.response.received, done.response.residual, done.response.underflow) == \
        (36, 60, True)
    itt, _ = m.submit(0, b"\x00" * 6)
    rsp = P.SCSIResponse.with_sense(b"\x70\0\x06" + bytes(15), itt=itt, status=2, statsn=1,
                                    expcmdsn=3, maxcmdsn=40)
    done = m.receive(rsp, 0.0)
    assert isinstance(done, CommandDone) and done.response.status == 2
    assert done.response.sense[2] == 6 and m.expstatsn == 2 and m.maxcmdsn == 40


def test_a_write_carries_immediate_and_unsolicited_data_then_answers_r2ts() -> None:
    m = machine()
    data = bytes(range(256)) * 256  # 64 KiB
    itt, pdus = m.submit(0, b"\x2a" + bytes(9), data_out=data)
    cmd, *outs = pdus
    assert isinstance(cmd, P.SCSICommand) and bytes(cmd.data) == data[:8192]
    assert not cmd.final  # unsolicited Data-Out follows, up to FirstBurstLength
    assert [(d.offset, len(d.data), d.final, d.ttt) for d in outs] == \
        [(8192, 8192, True, RESERVED_TAG)]
    r2t = P.R2T(itt=itt, ttt=7, offset=16384, length=49152, expcmdsn=2, maxcmdsn=32)
    assert m.receive(r2t, 0.0) is None
    sent = m.data_to_send()
    assert all(isinstance(d, P.DataOut) and d.ttt == 7 for d in sent)
    assert [d.offset for d in sent] == list(range(16384, 65536, 8192))  # type: ignore[attr-defined]
    assert [d.datasn for d in sent] == list(range(6))  # type: ignore[attr-defined]
    assert sent[-1].final and b"".join(bytes(d.data) for d in sent) == data[16384:]
    assert m.data_to_send() == []


def test_an_r2t_outside_the_write_stops_the_machine() -> None:
    m = machine()
    itt, _ = m.submit(0, b"\x2a" + bytes(9), data_out=bytes(4096))
    with pytest.raises(ConnectionError_, match="R2T"):
        m.receive(P.R2T(itt=itt, ttt=1, offset=0, length=8192), 0.0)


def test_commands_wait_for_the_window_and_go_in_cmdsn_order() -> None:
    m = machine(window=2)  # room for CmdSN 1 and 2
    sent = [m.submit(0, b"\x00" * 6) for _ in range(4)]
    assert [bool(p) for _, p in sent] == [True, True, False, False]
    assert not m.window_open()
    # an answer that moves MaxCmdSN lets the held ones out, in order
    m.receive(P.SCSIResponse(itt=sent[0][0], statsn=0, expcmdsn=2, maxcmdsn=4), 0.0)
    out = m.data_to_send()
    assert [(p.itt, p.cmdsn) for p in out] == [(sent[2][0], 3), (sent[3][0], 4)]  # type: ignore[attr-defined]


def test_a_window_below_expcmdsn_minus_one_is_ignored() -> None:
    m = machine(window=8)
    m.submit(0, b"\x00" * 6)
    m.receive(P.NopIn(itt=RESERVED_TAG, ttt=RESERVED_TAG, expcmdsn=10, maxcmdsn=5), 0.0)
    assert (m.expcmdsn, m.maxcmdsn) == (1, 8)


def test_the_targets_ping_is_answered_and_ours_are_timed() -> None:
    m = machine(nop_interval=5.0, nop_timeout=2.0, now=100.0)
    m.receive(P.NopIn(itt=RESERVED_TAG, ttt=0x1234, lun=0, expcmdsn=1, maxcmdsn=32), 101.0)
    [answer] = m.data_to_send()
    assert isinstance(answer, P.NopOut) and (answer.itt, answer.ttt) == (RESERVED_TAG, 0x1234)
    assert m.get_timer() == 106.0  # five seconds after the last word from the target
    assert m.handle_timer(105.0) is None and m.data_to_send() == []
    assert m.handle_timer(106.0) is None
    [ping] = m.data_to_send()
    assert isinstance(ping, P.NopOut) and ping.itt != RESERVED_TAG and ping.immediate
    assert m.get_timer() == 108.0
    m.receive(P.NopIn(itt=ping.itt, statsn=0, expcmdsn=1, maxcmdsn=32), 107.0)
    assert m.get_timer() == 112.0 and m.outstanding == 0
    m.handle_timer(112.0)
    assert m.data_to_send()
    silent = m.handle_timer(114.0)
    assert isinstance(silent, PeerSilent) and "2s" in silent.reason
    assert m.stopped is not None and m.get_timer() is None


def test_a_long_text_answer_is_continued_until_final() -> None:
    m = machine()
    itt, [req] = m.text([("SendTargets", "All")])
    assert isinstance(req, P.TextRequest) and req.immediate
    whole = encode_text([("TargetName", f"iqn.2026-12.test:t{i}") for i in range(300)])
    parts = [whole[i : i + 8192] for i in range(0, len(whole), 8192)]
    for k, part in enumerate(parts):
        last = k == len(parts) - 1
        event = m.receive(P.TextResponse(itt=itt, ttt=RESERVED_TAG if last else 50 + k,
                                         final=last, cont=not last, data=part, statsn=k,
                                         expcmdsn=1, maxcmdsn=32), 0.0)
        if not last:
            [more] = m.data_to_send()
            assert isinstance(more, P.TextRequest) and more.ttt == 50 + k and not more.data
            assert event is None
    assert isinstance(event, TextDone)
    assert [v for _, v in event.pairs] == [f"iqn.2026-12.test:t{i}" for i in range(300)]
    assert m.expstatsn == len(parts)


def test_a_rejected_request_is_reported_and_forgotten() -> None:
    m = machine()
    itt, [cmd] = m.submit(0, b"\x00" * 6)
    header = bytes(encode_buffers(cmd)[0][:48])
    event = m.receive(P.Reject(reason=0x09, data=header, statsn=0, expcmdsn=2, maxcmdsn=32),
                      0.0)
    assert event == Rejected(itt, 0x09) and m.outstanding == 0


def test_an_abandoned_command_is_never_written_again() -> None:
    m = machine()
    buf = bytearray(4096)
    itt, _ = m.submit(0, b"\x28" + bytes(9), read_length=4096, read_into=buf)
    assert m.abandon(itt) and not m.abandon(itt)
    bhs = bytes(encode_buffers(data_in(itt, 0, b"q" * 4096))[0][:48])
    assert m.placement(bhs) is None
    assert m.receive(data_in(itt, 0, b"q" * 4096, status=True), 0.0) is None
    assert buf == bytearray(4096)


def test_logout_and_task_management_are_immediate_requests() -> None:
    m = machine()
    itt, [req] = m.logout()
    assert isinstance(req, P.LogoutRequest) and req.immediate and req.cmdsn == 1
    event = m.receive(P.LogoutResponse(itt=itt, statsn=0, expcmdsn=1, maxcmdsn=32), 0.0)
    assert isinstance(event, RequestDone) and event.itt == itt
    itt, [tmf] = m.task_management(1, lun=3, referenced_itt=77)
    assert isinstance(tmf, P.TaskManagementRequest) and tmf.referenced_itt == 77
    assert m.cmdsn == 1  # immediate requests take no CmdSN


def test_a_pdu_the_initiator_never_receives_stops_the_machine() -> None:
    m = machine()
    with pytest.raises(ConnectionError_, match="unexpected"):
        m.receive(P.NopOut(), 0.0)
    assert Opcode.NOP_OUT == 0


# ---------------------------------------------------------------- against a model target


class ModelTarget:
    """A small in-memory target with its own rules written plainly (a disk of bytes, a
    command window, R2Ts for what is not sent unsolicited, Data-In in segments), to check
    the machine's invariants against."""

    def __init__(self, params: SessionParams, window: int, disk: bytearray) -> None:
        self.params, self.window, self.disk = params, window, disk
        self.expcmdsn, self.statsn = 1, 0
        self.writes: dict[int, tuple[int, bytearray, int]] = {}  # itt -> lba, data, got
        self.answers: list[P.PDU] = []
        self.written: dict[int, bytes] = {}  # itt -> the data a write stored
        self.read: dict[int, bytes] = {}  # itt -> the data a read found

    def _window(self) -> tuple[int, int]:
        return self.expcmdsn, self.expcmdsn + self.window - 1

    def take(self, pdu: P.PDU) -> None:
        if isinstance(pdu, P.SCSICommand):
            assert pdu.cmdsn == self.expcmdsn, "commands arrive in CmdSN order"
            assert pdu.cmdsn <= self._window()[1], "the initiator kept to the window"
            self.expcmdsn += 1
            lba = int.from_bytes(pdu.cdb[2:6], "big")
            if pdu.write:
                buf = bytearray(pdu.expected_length)
                buf[: len(pdu.data)] = pdu.data
                self.writes[pdu.itt] = (lba, buf, len(pdu.data))
                self._after_data(pdu.itt, pdu.final)
            else:
                self._read(pdu.itt, lba, pdu.expected_length)
        elif isinstance(pdu, P.DataOut):
            lba, buf, got = self.writes[pdu.itt]
            assert pdu.offset == got, "Data-Out in order, each byte once"
            buf[pdu.offset : pdu.offset + len(pdu.data)] = pdu.data
            self.writes[pdu.itt] = (lba, buf, got + len(pdu.data))
            self._after_data(pdu.itt, pdu.final)

    def _after_data(self, itt: int, final: bool) -> None:
        lba, buf, got = self.writes[itt]
        if got == len(buf):
            self.disk[lba * 512 : lba * 512 + len(buf)] = buf
            self.written[itt] = bytes(buf)
            del self.writes[itt]
            self._status(itt)
        elif final:  # the unsolicited part is over: ask for the rest
            n = min(len(buf) - got, self.params.max_burst_length)
            exp, mx = self._window()
            self.answers.append(P.R2T(itt=itt, ttt=itt + 1000, offset=got, length=n,
                                      statsn=self.statsn, expcmdsn=exp, maxcmdsn=mx))

    def _read(self, itt: int, lba: int, n: int) -> None:
        data = bytes(self.disk[lba * 512 : lba * 512 + n])
        self.read[itt] = data
        seg = self.params.max_recv_data_segment_length
        exp, mx = self._window()
        for off in range(0, n, seg):
            last = off + seg >= n
            self.answers.append(P.DataIn(
                itt=itt, offset=off, data=data[off : off + seg], final=last, has_status=last,
                statsn=self.statsn if last else 0, expcmdsn=exp, maxcmdsn=mx))
        self.statsn += 1

    def _status(self, itt: int) -> None:
        exp, mx = self._window()
        self.answers.append(P.SCSIResponse(itt=itt, statsn=self.statsn, expcmdsn=exp,
                                           maxcmdsn=mx))
        self.statsn += 1


ops = st.lists(st.tuples(st.booleans(), st.integers(0, 63), st.integers(1, 24)),
               min_size=1, max_size=24)


@settings(max_examples=60, deadline=None)
@given(ops, st.integers(1, 8), st.sampled_from([512, 4096, 8192]),
       st.sampled_from([(True, True), (False, True), (True, False), (False, False)]))
def test_any_mix_of_commands_is_answered_once_with_the_right_data(
        commands: list[tuple[bool, int, int]], window: int, segment: int,
        r2t_and_immediate: tuple[bool, bool]) -> None:
    initial_r2t, immediate = r2t_and_immediate
    params = SessionParams(max_xmit_data_segment_length=segment,
                           max_recv_data_segment_length=segment, max_burst_length=8192,
                           first_burst_length=4096, initial_r2t=initial_r2t,
                           immediate_data=immediate)
    disk = bytearray(64 * 512 + 24 * 512)
    target = ModelTarget(params, window, disk)
    m = InitiatorConnection(params, cmdsn=1, expcmdsn=1, maxcmdsn=window, statsn=0)
    wire: list[P.PDU] = []
    wanted: dict[int, tuple[bool, int, int, bytes]] = {}
    for k, (write, lba, blocks) in enumerate(commands):
        payload = bytes([k + 1]) * (blocks * 512)
        cdb = bytes([0x2A if write else 0x28, 0]) + lba.to_bytes(4, "big") + bytes(4)
        if write:
            itt, pdus = m.submit(0, cdb, data_out=payload)
        else:
            itt, pdus = m.submit(0, cdb, read_length=blocks * 512)
        wanted[itt] = (write, lba, blocks, payload)
        wire += pdus
    done: dict[int, CommandDone] = {}
    statsns: list[int] = []
    for _ in range(10_000):
        if not wire and not target.answers:
            break
        if wire:  # the initiator's PDUs arrive in order
            target.take(wire.pop(0))
        answers, target.answers = target.answers, []
        for pdu in answers:
            event = m.receive(pdu, 0.0)
            statsns.append(m.expstatsn)
            if event is not None:
                assert isinstance(event, CommandDone)
                assert event.itt not in done, "every command is answered once"
                done[event.itt] = event
            wire += m.data_to_send()
    assert set(done) == set(wanted)
    assert statsns == sorted(statsns), "ExpStatSN never goes back"
    for itt, (write, _lba, blocks, payload) in wanted.items():
        r = done[itt].response
        assert r.status == 0
        if write:  # every byte placed once, where it belongs
            assert target.written[itt] == payload
        else:  # the data the target sent, whole, in the command's buffer
            assert r.received == blocks * 512 and bytes(r.data) == target.read[itt]
    assert m.outstanding == 0 and m.cmdsn == len(commands) + 1


@pytest.mark.parametrize(("initial_r2t", "immediate", "expected"), [
    (False, True, (8192, 16384)),  # immediate data, then unsolicited Data-Out to the burst
    (False, False, (0, 16384)),  # unsolicited Data-Out only
    (True, True, (8192, 8192)),  # immediate data only
    (True, False, (0, 0)),  # everything waits for an R2T
])
def test_what_a_write_sends_before_any_r2t(initial_r2t: bool, immediate: bool,
                                            expected: tuple[int, int]) -> None:
    params = SessionParams(max_xmit_data_segment_length=8192, first_burst_length=16384,
                           initial_r2t=initial_r2t, immediate_data=immediate)
    assert params.unsolicited_limit(65536) == expected
    assert params.unsolicited_limit(4096) == tuple(min(n, 4096) for n in expected)
