"""Commands that run as tasks on a target connection: buffer budget, Data-Out solicited
through the machine, the logical unit, the machine's answer; and the requests that are
not commands (Text, task management)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from blockbridge.iscsi import target_events as E
from blockbridge.iscsi.constants import TaskFunction, TaskResponse, name_of
from blockbridge.iscsi.errors import MachineStopped
from blockbridge.iscsi.target_connection import TargetConnection
from blockbridge.scsi.constants import Status
from blockbridge.transport import ConnectionClosed

from .commands import target_result, timed_out
from .lun import SCSIResult

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger("blockbridge_target.connection")


@dataclass(eq=False)
class Job:
    """A command run as a task."""

    ev: E.CommandReceived
    reserved: int = 0  # bytes of the session's budget it holds
    ready: trio.Event = field(default_factory=trio.Event)  # its data is in, or timed out
    data: memoryview | None = None
    timed_out: tuple[int, int] | None = None  # bytes received and expected, if it did
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


async def run_job(conn: Connection, m: TargetConnection, job: Job) -> None:
    """A command's task: collect, run, answer; its tag, buffer and budget go back after."""
    itt = job.ev.itt
    answered = False
    try:
        with job.scope:
            result = await execute(conn, m, job)
            pdus = conn.response(m, job.ev, result)
            answered = True
            await conn.pdus.send_pdus(pdus)
            if result.release is not None:  # sent: the buffer may be reused
                result.release()
    except (ConnectionClosed, MachineStopped):
        pass
    finally:
        if conn.jobs.get(itt) is job:  # once answered, its tag may be in use again
            del conn.jobs[itt]
        if not answered:
            m.discard(itt)
        if job.reserved:
            conn.budget.give(job.reserved)
        conn.command_ended()

async def reserve(conn: Connection, job: Job, size: int) -> bool:
    """Reserve ``size`` bytes for the job, waiting for them up to the Data-Out
    timeout; False if they did not come."""
    with trio.move_on_after(conn.data_out_timeout):
        await conn.budget.take(size)
        job.reserved += size
        return True
    s = conn.budget
    conn.note_timeout(
        f"no buffer budget for task 0x{job.ev.itt:08x} ({size} bytes) within "
        f"{conn.data_out_timeout:g}s: answered BUSY (the session holds {s.used} of "
        f"{s.limit} bytes, all sessions {s.server.used} of {s.server.limit})")
    return False

async def execute(conn: Connection, m: TargetConnection, job: Job) -> SCSIResult:
    s = conn.session
    assert s is not None and s.nexus is not None
    cmd = job.ev.cmd
    lu = s.luns.get(job.ev.lun)
    data = memoryview(b"")
    if cmd.write and cmd.expected_length:
        # with what it reads (COMPARE AND WRITE, ORWRITE): all it needs at once
        size = cmd.expected_length + (lu.buffer_length(cmd.cdb) if lu else 0)
        if not job.reserved and (not conn.budget.fits(size)
                                 or not await reserve(conn, job, size)):
            return SCSIResult(Status.BUSY)
        for ev in m.solicit(cmd.itt, trio.current_time()):
            await conn.handle(m, ev)
        conn.rearm(m)
        await job.ready.wait()
        if job.timed_out is not None or job.data is None:
            received, expected = job.timed_out or (0, cmd.expected_length)
            conn.note_timeout(
                f"no Data-Out for task 0x{cmd.itt:08x} within {conn.data_out_timeout:g}s "
                f"({received} of {expected} bytes received): aborted with INITIATOR "
                "RESPONSE TIMEOUT")
            return timed_out(lu)
        data = job.data
    answer = target_result(cmd, s.luns, job.ev.lun)
    if answer is not None or lu is None:
        return answer or SCSIResult(Status.GOOD)
    need = lu.buffer_length(cmd.cdb) if not job.reserved else 0  # a write's: taken
    # a need beyond the budget is a command the unit refuses without reading
    if need and conn.budget.fits(need) and not await reserve(conn, job, need):
        return SCSIResult(Status.BUSY)
    return await lu.execute(cmd.cdb, data, s.nexus)


def text_answers(conn: Connection, pairs: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """The answer to a text request: SendTargets, and NotUnderstood for any other key."""
    assert conn.session is not None
    answers: list[tuple[str, str]] = []
    for key, value in pairs:
        if key == "SendTargets":
            answers += conn.server.send_targets(
                value, conn.session, conn.peer.rsplit(":", 1)[0].strip("[]"), conn.local,
                tls=conn.tls)
        else:
            answers.append((key, "NotUnderstood"))
    return answers


async def task_management(conn: Connection, m: TargetConnection, ev: E.TaskManagement) -> None:
    """End the tasks the machine names, reset units as asked, answer."""
    s = conn.session
    assert s is not None
    fn, response = ev.function, ev.response
    abort = [itt for itt in ev.abort if itt in conn.jobs]  # others answer on their own
    lu = s.luns.get(ev.lun)
    if fn == TaskFunction.ABORT_TASK and not abort:
        response = TaskResponse.TASK_DOES_NOT_EXIST
    if fn == TaskFunction.LOGICAL_UNIT_RESET and lu is None:
        response, abort = TaskResponse.LUN_DOES_NOT_EXIST, []
    m.abort(abort)
    for itt in abort:
        conn.jobs[itt].scope.cancel()
    if response == TaskResponse.COMPLETE:
        if fn == TaskFunction.LOGICAL_UNIT_RESET and lu is not None:
            lu.logical_unit_reset(s.nexus)
        elif fn in (TaskFunction.TARGET_WARM_RESET, TaskFunction.TARGET_COLD_RESET):
            for unit in s.luns.values():
                unit.target_reset(s.nexus, cold=fn == TaskFunction.TARGET_COLD_RESET)
    await trio.lowlevel.checkpoint()
    await conn.pdus.send_pdus([m.tmf_response(ev.itt, response)])
    log.info("%s: task management %s on LUN %d: %s", conn.peer,
             name_of(TaskFunction, fn), ev.lun, name_of(TaskResponse, response))
    if fn == TaskFunction.TARGET_COLD_RESET:
        conn.close()
