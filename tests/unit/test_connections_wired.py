"""The initiator's and the target's connection machines wired to each other in memory:
no socket, no task, no clock; hypothesis picks which PDU is delivered next and which
command the logical unit finishes next."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockbridge.iscsi import pdu as P
from blockbridge.iscsi import target_events as E
from blockbridge.iscsi.initiator_connection import CommandDone, InitiatorConnection, TextDone
from blockbridge.iscsi.params import SessionParams
from blockbridge.iscsi.target_connection import TargetConnection

BS = 512


def pair(initiator_mrdsl: int, target_mrdsl: int, *, first_burst: int, initial_r2t: bool,
         immediate: bool, depth: int) -> tuple[InitiatorConnection, TargetConnection]:
    common = dict(first_burst_length=first_burst, max_burst_length=max(first_burst, 8192),
                  initial_r2t=initial_r2t, immediate_data=immediate)
    ini = SessionParams(max_recv_data_segment_length=initiator_mrdsl,
                        max_xmit_data_segment_length=target_mrdsl, **common)  # type: ignore[arg-type]
    tgt = SessionParams(max_recv_data_segment_length=target_mrdsl,
                        max_xmit_data_segment_length=initiator_mrdsl, **common)  # type: ignore[arg-type]
    target = TargetConnection(tgt, expcmdsn=1, depth=depth, statsn=0)
    initiator = InitiatorConnection(ini, cmdsn=1, expcmdsn=1,
                                    maxcmdsn=target.window.maxcmdsn, statsn=0)
    return initiator, target


commands = st.lists(st.tuples(st.booleans(), st.integers(0, 63), st.integers(1, 24)),
                    min_size=1, max_size=16)
segment = st.sampled_from([512, 1024, 4096, 8192])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands, segment, segment, st.sampled_from([512, 4096, 16384]), st.booleans(),
       st.booleans(), st.integers(1, 8), st.data())
def test_commands_between_the_two_machines(
        cmds: list[tuple[bool, int, int]], ini_seg: int, tgt_seg: int, first_burst: int,
        initial_r2t: bool, immediate: bool, depth: int, data: st.DataObject) -> None:
    initiator, target = pair(ini_seg, tgt_seg, first_burst=first_burst,
                             initial_r2t=initial_r2t, immediate=immediate, depth=depth)
    disk = bytearray(90 * BS)
    to_target: list[P.PDU] = []
    to_initiator: list[P.PDU] = []
    runnable: dict[int, bytes | None] = {}  # target tags the unit may finish: write data
    wanted: dict[int, tuple[bool, int, bytes, int]] = {}  # initiator ITT -> the command
    stored: dict[int, bytes] = {}  # what each write put on the disk
    found: dict[int, bytes] = {}  # what each read found there
    done: dict[int, CommandDone] = {}
    expstatsns: list[int] = []
    unsent = list(enumerate(cmds))

    def on_target(events: list[E.Event]) -> None:
        for ev in events:
            if isinstance(ev, E.CommandReceived):
                if not ev.cmd.write:
                    runnable[ev.itt] = None
                elif ev.complete:
                    runnable[ev.itt] = bytes(ev.data)
                else:
                    on_target(target.solicit(ev.itt, now=0.0))
            elif isinstance(ev, E.DataReceived):
                assert ev.itt not in runnable, "write data handed over twice"
                runnable[ev.itt] = bytes(ev.data)
            elif isinstance(ev, E.Send):
                to_initiator.extend(ev.pdus)  # type: ignore[arg-type]
            else:
                raise AssertionError(f"the target saw a broken rule: {ev}")

    for _ in range(20_000):
        choices = []
        if unsent:
            choices.append("submit")
        if to_target:
            choices.append("to target")
        if to_initiator:
            choices.append("to initiator")
        if runnable:
            choices.append("finish")
        if not choices:
            break
        choice = data.draw(st.sampled_from(choices))
        if choice == "submit":
            k, (write, lba, blocks) = unsent.pop(0)
            payload = bytes([k + 1]) * (blocks * BS)
            cdb = bytes([0x2A if write else 0x28, 0]) + lba.to_bytes(4, "big") + b"\0" \
                + blocks.to_bytes(2, "big") + b"\0"
            if write:
                itt, pdus = initiator.submit(0, cdb, data_out=payload)
            else:
                itt, pdus = initiator.submit(0, cdb, read_length=blocks * BS)
            wanted[itt] = (write, lba, payload, blocks)
            to_target.extend(pdus)
        elif choice == "to target":
            on_target(target.receive(to_target.pop(0), now=0.0))
        elif choice == "to initiator":
            event = initiator.receive(to_initiator.pop(0), 0.0)
            expstatsns.append(initiator.expstatsn)
            to_target.extend(initiator.data_to_send())
            if event is not None:
                assert isinstance(event, CommandDone)
                assert event.itt not in done, "a command answered twice"
                done[event.itt] = event
        else:
            itt = data.draw(st.sampled_from(sorted(runnable)))
            payload_in = runnable.pop(itt)
            write, lba, _, blocks = wanted[itt]
            if write:
                assert payload_in is not None
                disk[lba * BS : lba * BS + len(payload_in)] = payload_in
                stored[itt] = payload_in
                to_initiator.extend(target.respond(itt, 0, written=len(payload_in)))  # type: ignore[arg-type]
            else:
                found[itt] = bytes(disk[lba * BS : (lba + blocks) * BS])
                to_initiator.extend(target.respond(itt, 0, found[itt]))  # type: ignore[arg-type]
    assert set(done) == set(wanted), "every command is answered"
    assert expstatsns == sorted(expstatsns), "ExpStatSN never goes back"
    for itt, (write, _lba, payload, blocks) in wanted.items():
        r = done[itt].response
        assert (r.status, r.residual) == (0, 0)
        if write:
            assert stored[itt] == payload, "write data placed once, where it belongs"
        else:
            assert r.received == blocks * BS and bytes(r.data) == found[itt]
    assert initiator.outstanding == 0 and not target.busy


def test_a_send_targets_answer_of_300_targets_arrives_whole() -> None:
    initiator, target = pair(8192, 8192, first_burst=16384, initial_r2t=False,
                             immediate=True, depth=8)
    names = [("TargetName", f"iqn.2026-12.test:target-{i:03}") for i in range(300)]
    itt, pdus = initiator.text([("SendTargets", "All")])
    to_target = list(pdus)
    result = None
    rounds = 0
    while to_target:
        rounds += 1
        for ev in target.receive(to_target.pop(0), now=0.0):
            if isinstance(ev, E.TextRequested):
                assert ev.pairs == (("SendTargets", "All"),)
                answer = target.text_answer(ev.itt, names)
            elif isinstance(ev, E.Send):
                answer = list(ev.pdus)  # type: ignore[arg-type]
            else:
                raise AssertionError(f"unexpected {ev}")
            for pdu in answer:
                event = initiator.receive(pdu, 0.0)
                to_target.extend(initiator.data_to_send())
                if event is not None:
                    result = event
    assert isinstance(result, TextDone) and result.itt == itt
    assert result.pairs == names
    assert rounds > 1  # the answer took several Text Responses
