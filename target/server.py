"""The target server: portals, connection handlers, discovery answers, graceful shutdown."""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Protocol

import trio

from blockbridge.iscsi.constants import LoginStatus
from blockbridge.iscsi.login import ChapCredentials, TargetLoginConfig
from blockbridge.scsi.constants import CAPACITY_DATA_HAS_CHANGED, REPORTED_LUNS_DATA_HAS_CHANGED

from .connection import Connection
from .session import SessionTable
from .targets import TargetDef

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 10.0


class AccessPolicy(Protocol):
    def initiator_allowed(self, target_name: str, initiator_name: str, address: str) -> bool: ...

    def portal_allowed(self, target_name: str, local_address: str) -> bool: ...


class ListenError(Exception):
    """A portal could not be opened; the message is meant for the user."""


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TargetServer:
    def __init__(
        self,
        targets: Sequence[TargetDef],
        *,
        discovery_users: dict[str, bytes] | None = None,
        discovery_outgoing: ChapCredentials | None = None,
        acl: AccessPolicy | None = None,
        tpgt: int = 1,
    ) -> None:
        self.targets = {t.name: t for t in targets}
        self.discovery_users = discovery_users or {}
        self.discovery_outgoing = discovery_outgoing
        self.acl = acl
        self.tpgt = tpgt
        self.sessions = SessionTable()
        self.connections: set[Connection] = set()
        self.addresses: list[tuple[str, int]] = []
        self.login_failures: dict[str, list[float]] = {}
        self._listeners_scope = trio.CancelScope()
        self._tls: dict[int, ssl.SSLContext] = {}
        self.tls_addresses: set[tuple[str, int]] = set()
        self._draining = False

    # ---------------------------------------------------------------- policy

    def _allowed(self, target: str, initiator: str, address: str, local: str) -> bool:
        if self.acl is None:
            return True
        return self.acl.initiator_allowed(target, initiator, address) and \
            self.acl.portal_allowed(target, local)

    def resolver(
        self, peer_ip: str, local_ip: str
    ) -> Callable[[str, str, str], TargetLoginConfig | LoginStatus]:
        def resolve(session_type: str, target_name: str, initiator: str
                    ) -> TargetLoginConfig | LoginStatus:
            if self._draining:
                return LoginStatus.SERVICE_UNAVAILABLE
            if session_type == "Discovery":
                return TargetLoginConfig(target_name="", incoming=self.discovery_users,
                                         outgoing=self.discovery_outgoing)
            t = self.targets.get(target_name)
            if t is None:
                return LoginStatus.NOT_FOUND
            if not self._allowed(t.name, initiator, peer_ip, local_ip):
                return LoginStatus.AUTHORIZATION_FAILURE
            if t.max_sessions and sum(
                1 for s in self.sessions.sessions.values() if s.target_name == t.name
            ) >= t.max_sessions:
                return LoginStatus.TOO_MANY_CONNECTIONS
            return TargetLoginConfig(target_name=t.name, incoming=t.incoming,
                                     outgoing=t.outgoing, operational=t.operational,
                                     target_alias=t.alias)

        return resolve

    def note_login_failure(self, peer: str, reason: str) -> float:
        """Record a failed login; returns how long to hold the answer (brute-force brake)."""
        ip = peer.rsplit(":", 1)[0]
        now = trio.current_time()
        recent = [t for t in self.login_failures.get(ip, []) if now - t < 60] + [now]
        self.login_failures[ip] = recent[-64:]
        if len(recent) < 3:
            return 0.0
        if len(recent) in (3, 10, 30):
            log.warning("%s: %d failed logins in the last minute; slowing this address down",
                        ip, len(recent))
        return float(min(2 ** (len(recent) - 3), 10))

    def send_targets(
        self, value: str, session: object, peer_ip: str, local: str
    ) -> list[tuple[str, str]]:
        from .session import Session

        assert isinstance(session, Session)
        local_ip = local.rsplit(":", 1)[0].strip("[]")
        if value == "All":
            names = list(self.targets)
        elif value == "":
            names = [session.target_name] if session.target_name else []
        else:
            names = [value] if value in self.targets else []
        out: list[tuple[str, str]] = []
        for name in names:
            if not self._allowed(name, session.initiator_name, peer_ip, local_ip):
                continue
            out.append(("TargetName", name))
            for host, port in self._portal_addresses(local):
                out.append(("TargetAddress", f"{format_address(host, port)},{self.tpgt}"))
        return out

    def _portal_addresses(self, local: str) -> list[tuple[str, int]]:
        host, _, _port = local.rpartition(":")
        host = host.strip("[]")
        result = []
        for h, p in self.addresses:
            if h in ("0.0.0.0", "::"):
                result.append((host, p))
            else:
                result.append((h, p))
        return list(dict.fromkeys(result))

    def reload(self, targets: Sequence[TargetDef], discovery_users: dict[str, bytes],
               discovery_outgoing: ChapCredentials | None) -> list[str]:
        """Apply a new configuration without dropping sessions; returns what changed.

        Targets and LUNs are added and removed; a removed target accepts no new logins but
        its sessions go on. A LUN whose number exists already stays the same unit (its
        state and reservations), with the size its backing store has now and the store a
        changed Lun line names.  The sessions of the target are told with unit attentions
        (SPC-4): CAPACITY DATA HAS CHANGED on a LUN whose size changed, REPORTED LUNS DATA
        HAS CHANGED on every LUN that stays when LUNs were added or removed.
        """
        changes: list[str] = []
        self.discovery_users, self.discovery_outgoing = discovery_users, discovery_outgoing
        new = {t.name: t for t in targets}
        for name in list(self.targets):
            if name not in new:
                del self.targets[name]
                changes.append(f"removed target {name} (its sessions continue)")
        for name, fresh in new.items():
            old = self.targets.get(name)
            if old is None:
                self.targets[name] = fresh
                changes.append(f"added target {name}")
                continue
            old.alias, old.incoming, old.outgoing = fresh.alias, fresh.incoming, fresh.outgoing
            old.operational, old.queued_commands = fresh.operational, fresh.queued_commands
            old.max_sessions = fresh.max_sessions
            old.nop_interval, old.nop_timeout = fresh.nop_interval, fresh.nop_timeout
            changes += self._reload_luns(old, fresh)
        return changes

    def _reload_luns(self, old: TargetDef, fresh: TargetDef) -> list[str]:
        """Bring the LUNs of a running target to the new configuration, in place: the
        sessions share ``old.luns``, so added LUNs are at once usable by them and removed
        ones answer LOGICAL UNIT NOT SUPPORTED."""
        changes: list[str] = []
        nexuses = [s.nexus for s in self.sessions.sessions.values()
                   if s.target_name == old.name and s.nexus is not None]
        before = set(old.luns)
        kept = [lu for number, lu in old.luns.items() if number in fresh.luns]
        for number in list(old.luns):
            if number not in fresh.luns:
                del old.luns[number]
                changes.append(f"removed LUN {number} of {old.name}")
        for number, lu in fresh.luns.items():
            unit = old.luns.get(number)
            if unit is None:
                old.luns[number] = lu
                changes.append(f"added LUN {number} to {old.name}")
            elif unit.adopt(lu):
                unit.unit_attention(CAPACITY_DATA_HAS_CHANGED, nexuses)
                changes.append(f"LUN {number} of {old.name} is now {unit.size_bytes} bytes")
        if before != set(fresh.luns):
            for unit in kept:
                unit.unit_attention(REPORTED_LUNS_DATA_HAS_CHANGED, nexuses)
        return changes

    # ---------------------------------------------------------------- serving

    async def open_listeners(
        self, portals: Sequence[tuple[str, int]], tls: ssl.SSLContext | None = None
    ) -> list[trio.SocketListener]:
        listeners: list[trio.SocketListener] = []
        for host, port in portals:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = trio.socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                await sock.bind((host, port))
            except OSError as exc:
                sock.close()
                for lst in listeners:
                    await lst.aclose()
                where = format_address(host, port)
                if exc.errno == errno.EADDRINUSE:
                    raise ListenError(f"cannot listen on {where}: address already in use — is "
                                      "another target running? use --portal to pick another "
                                      "port") from None
                if exc.errno == errno.EACCES:
                    raise ListenError(f"cannot listen on {where}: permission denied (ports "
                                      "below 1024 need root or CAP_NET_BIND_SERVICE)") from None
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise ListenError(f"cannot listen on {where}: no such local address") \
                        from None
                raise ListenError(f"cannot listen on {where}: {exc.strerror}") from None
            sock.listen(128)
            listener = trio.SocketListener(sock)
            listeners.append(listener)
            bound = sock.getsockname()
            self.addresses.append((bound[0], bound[1]))
            if tls is not None:
                self._tls[id(listener)] = tls
                self.tls_addresses.add((bound[0], bound[1]))
        return listeners

    async def serve(
        self,
        portals: Sequence[tuple[str, int]],
        *,
        task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await self.open_listeners(portals)
        await self.serve_listeners(listeners, task_status=task_status)

    async def serve_listeners(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as handlers:
            with self._listeners_scope:
                async with trio.open_nursery() as accept:
                    for listener in listeners:
                        accept.start_soon(self._accept_loop, listener, handlers)
                    task_status.started(list(self.addresses))
            # listeners are closed: drain the connections
            for listener in listeners:
                await listener.aclose()
            await self._drain()
            handlers.cancel_scope.cancel()
        await self._flush_all()

    async def _accept_loop(self, listener: trio.SocketListener, handlers: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept failed: %s; retrying", exc)
                    await trio.sleep(0.1)
                    continue
                raise
            handlers.start_soon(self._handle, stream, self._tls.get(id(listener)))

    async def _handle(self, tcp: trio.SocketStream, tls: ssl.SSLContext | None) -> None:
        try:
            tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = tcp.socket.getpeername()
            local = tcp.socket.getsockname()
        except OSError:
            await tcp.aclose()
            return
        stream: trio.abc.Stream = tcp
        if tls is not None:
            ssl_stream = trio.SSLStream(tcp, tls, server_side=True)
            try:
                with trio.fail_after(15):
                    await ssl_stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError) as exc:
                cause = exc.__cause__ or exc
                log.warning("%s: TLS handshake failed (%s); closed",
                            format_address(peer[0], peer[1]), cause)
                await tcp.aclose()
                return
            stream = ssl_stream
        conn = Connection(self, stream, format_address(peer[0], peer[1]),
                          format_address(local[0], local[1]))
        self.connections.add(conn)
        log.debug("%s: connected", conn.peer)
        try:
            await conn.run()
        except Exception:
            log.exception("%s: internal error; connection dropped", conn.peer)
        finally:
            self.connections.discard(conn)

    def shutdown(self) -> None:
        """Stop accepting; in-flight commands finish, then sessions close."""
        self._draining = True
        self._listeners_scope.cancel()

    async def _drain(self) -> None:
        with trio.move_on_after(SHUTDOWN_GRACE):
            while any(c.busy for c in self.connections):
                await trio.sleep(0.02)
        for conn in list(self.connections):
            conn.close()

    async def _flush_all(self) -> None:
        for t in self.targets.values():
            for lu in t.luns.values():
                try:
                    with trio.move_on_after(30):
                        await lu.flush()
                except OSError as exc:
                    log.error("flushing LUN %d of %s failed: %s", lu.number, t.name, exc)
                lu.close()
