"""The login phase of a target connection: the login machine driven over the PDU stream,
then the session it opens (or reinstates)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from blockbridge.iscsi import pdu as P
from blockbridge.iscsi.constants import LoginStatus
from blockbridge.iscsi.login import TargetLogin
from blockbridge.iscsi.window import login_numbers
from blockbridge.transport import RECEIVE_CHUNK

from .lun import Nexus
from .session import Session

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger("blockbridge_target.connection")


class Drop(Exception):
    """A protocol violation after which the connection is closed."""


async def log_in(conn: Connection) -> bool:
    """Run the login; True once a session is open for ``conn`` (``conn.session``)."""
    server = conn.server
    peer_ip = conn.peer.rsplit(":", 1)[0].strip("[]")
    machine: TargetLogin | None = None
    expcmdsn = 0
    depth = 32
    with trio.move_on_after(server.limits.login_timeout) as timeout:
        while True:
            req = await conn.pdus.receive_pdu()
            if not isinstance(req, P.LoginRequest):
                raise Drop(f"expected a Login request, got {type(req).__name__}")
            if machine is None:
                expcmdsn = req.cmdsn
                if req.tsih != 0:
                    rsp = P.LoginResponse(
                        itt=req.itt, isid=req.isid, tsih=req.tsih, statsn=conn.statsn,
                        expcmdsn=expcmdsn, maxcmdsn=expcmdsn,
                        status_class=LoginStatus.SESSION_DOES_NOT_EXIST.status_class,
                        status_detail=LoginStatus.SESSION_DOES_NOT_EXIST.detail)
                    await conn.pdus.send_pdu(rsp)
                    log.info("%s: refused connection to existing session %d "
                             "(one connection per session)", conn.peer, req.tsih)
                    return False
                machine = server.login_machine(
                    peer_ip, conn.local.rsplit(":", 1)[0].strip("[]"), bytes(req.isid))
                machine.assign_tsih(server.sessions.allocate_tsih())
            cfg = machine.config
            if cfg is not None and cfg.target_name in server.targets:
                depth = server.targets[cfg.target_name].queued_commands
            was_authenticated = machine.authenticated
            maxcmdsn, next_statsn = login_numbers(conn.statsn, expcmdsn, depth)
            rsp = machine.receive(req, statsn=conn.statsn, expcmdsn=expcmdsn,
                                  maxcmdsn=maxcmdsn)
            conn.statsn = next_statsn
            if machine.failed:
                # names are checked (an invalid one is the failure), the target is
                # shown as asked for, escaped; the failure text is escaped already
                from blockbridge.iscsi.names import printable

                log.warning("%s: login of %s to %s refused: %s", conn.peer,
                            machine.initiator_name or "?", machine.target_name
                            or printable(machine.requested_target, 240) or "?",
                            machine.failure)
                await trio.sleep(server.login_hold(peer_ip, failed=True))
                await conn.pdus.send_pdu(rsp)
                return False
            if machine.authenticated and not was_authenticated:
                # The answer that tells a guess right is held as long as a wrong one.
                await trio.sleep(server.login_hold(peer_ip, failed=False))
            await conn.pdus.send_pdu(rsp)
            if machine.done:
                break
    if timeout.cancelled_caught or machine is None:
        raise Drop("login did not complete in time")
    params = machine.params
    refused = server.check_session(machine.target_name, machine.initiator_name,
                                   machine.isid, machine.auth_user)
    if refused is not None:  # another login took the session while we answered
        raise Drop(f"login of {machine.initiator_name} refused: {refused}")
    conn.pdus.max_data_segment_length = max(params.max_recv_data_segment_length, 8192)
    conn.pdus.header_digest = params.header_digest
    conn.pdus.data_digest = params.data_digest
    discovery = machine.session_type == "Discovery"
    target = None if discovery else server.targets[machine.target_name]
    nexus = None if discovery else Nexus(machine.initiator_name, machine.isid,
                                         machine.target_name, server.tpgt)
    if not discovery:
        old = server.sessions.find(machine.initiator_name, machine.isid, machine.target_name)
        if old is not None:
            log.info("%s: reinstating session %d of %s", conn.peer, old.tsih,
                     machine.initiator_name)
            for other in list(old.connections):
                other.close()
            server.sessions.remove(old)
            if old.nexus is not None:
                for lu in old.luns.values():
                    lu.nexus_lost(old.nexus)
            old.connections.clear()
    conn.session = Session(
        tsih=machine.tsih, isid=machine.isid, initiator_name=machine.initiator_name,
        target_name=machine.target_name, params=params, nexus=nexus,
        luns=target.luns if target else {},
        expcmdsn=expcmdsn, depth=depth, discovery=discovery,
        chap_user=machine.auth_user)
    conn.session.connections.add(conn)
    server.sessions.add(conn.session)
    if not discovery:
        # a proven session: its place among the unproven goes to the next one
        server.release(conn.address_key)
        conn.unproven = False
        conn.pdus.receive_chunk = RECEIVE_CHUNK
    log.info("%s: %s logged in to %s (session %d%s%s%s)", conn.peer,
             machine.initiator_name, machine.target_name or "discovery", machine.tsih,
             f", CHAP user {machine.auth_user}" if machine.auth_user else "",
             ", header digest" if params.header_digest else "",
             ", data digest" if params.data_digest else "")
    return True
