"""The target's full-feature machine under hostile PDU sequences: events or a
ProtocolError that stops it, never another exception, and its window count right."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockbridge.iscsi import pdu as P
from blockbridge.iscsi import target_events as E
from blockbridge.iscsi.constants import RESERVED_TAG
from blockbridge.iscsi.errors import MachineStopped, ProtocolError
from blockbridge.iscsi.params import SessionParams
from blockbridge.iscsi.target_connection import TargetConnection
from tests.unit.test_target_connection import read10

_u32 = st.integers(0, 2**32 - 1)
_small = st.sampled_from([0, 1, 2, 3, RESERVED_TAG])
_pdus = st.one_of(
    st.builds(P.SCSICommand, itt=_small, cmdsn=st.integers(0, 6), expected_length=st.sampled_from(
        [0, 512, 4096, 70000]), read=st.booleans(), write=st.booleans(),
        final=st.booleans(), immediate=st.booleans(), cdb=st.sampled_from([read10(1), b""]),
        data=st.binary(max_size=600), lun=st.sampled_from([0, P.encode_lun(1)])),
    st.builds(P.DataOut, itt=_small, ttt=st.one_of(_small, _u32), datasn=st.integers(0, 3),
              offset=st.sampled_from([0, 512, 1024, 4096]), final=st.booleans(),
              data=st.binary(max_size=1100)),
    st.builds(P.NopOut, itt=_small, ttt=st.one_of(_small, _u32), cmdsn=st.integers(0, 6),
              immediate=st.booleans(), data=st.binary(max_size=20)),
    st.builds(P.TextRequest, itt=_small, ttt=st.one_of(_small, _u32), cont=st.booleans(),
              cmdsn=st.integers(0, 6), data=st.sampled_from(
                  [b"", b"SendTargets=All\0", b"x", b"a=b\0c\0", b"\xff=\0"])),
    st.builds(P.TaskManagementRequest, itt=_small, function=st.integers(0, 20),
              referenced_itt=_small, immediate=st.booleans()),
    st.builds(P.LogoutRequest, itt=_small, reason=st.integers(0, 3), cmdsn=st.integers(0, 6)),
    st.builds(P.SNACKRequest, itt=_small),
    st.builds(P.LoginRequest, itt=_small),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_pdus, max_size=25), st.data())
def test_hostile_pdus_give_events_or_a_protocol_error_never_a_crash(
        pdus: list[P.PDU], data: st.DataObject) -> None:
    m = TargetConnection(SessionParams(first_burst_length=1024, max_burst_length=2048,
                                       initial_r2t=False),
                         expcmdsn=1, depth=3, statsn=1, data_out_timeout=5)
    now = 0.0
    for pdu in pdus:
        now += 1
        try:
            events = m.receive(pdu, now) + m.handle_timer(now)
        except ProtocolError:
            assert m.state is E.State.FAILED
            with pytest.raises(MachineStopped):
                m.receive(pdu, now)
            return
        for ev in events:
            if isinstance(ev, E.CommandReceived | E.DataTimedOut | E.DataReceived):
                if data.draw(st.booleans()) and ev.itt in m.tasks():
                    m.respond(ev.itt, 0, b"r" * 100)
                elif isinstance(ev, E.CommandReceived) and not ev.complete:
                    m.solicit(ev.itt, now)
            elif isinstance(ev, E.TextRequested):
                m.text_answer(ev.itt, [("TargetName", "t" * 200)] * 60)
            elif isinstance(ev, E.TaskManagement):
                m.abort(ev.abort)
                for itt in ev.abort:
                    m.discard(itt)
                m.tmf_response(ev.itt, ev.response)
            elif isinstance(ev, E.LogoutRequested):
                m.logout_response(ev.itt, ev.reason)
                return
        assert m.window.in_flight == len(m.tasks())
