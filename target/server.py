"""The target server: portals, connection handlers, discovery answers, graceful shutdown."""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import os
import socket
import ssl
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from blockbridge.iscsi import chap
from blockbridge.iscsi.constants import LoginStatus
from blockbridge.iscsi.errors import LoginFailed
from blockbridge.iscsi.login import ChapCredentials, TargetLogin, TargetLoginConfig
from blockbridge.iscsi.names import printable
from blockbridge.poller import Poller
from blockbridge.scsi.constants import CAPACITY_DATA_HAS_CHANGED, REPORTED_LUNS_DATA_HAS_CHANGED

from .budget import BufferLimits, ServerBudget
from .connection import Connection
from .session import SessionTable
from .targets import TargetDef

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 10.0
ACCEPT_PAUSE = 0.5  # out of descriptors: accept again once a connection closes, or after this
REPORT_INTERVAL = 60.0  # recurring refusals are logged once per interval, with a count


@dataclass(frozen=True)
class Limits:
    """What peers may hold before they have proved anything (docs/security.md)."""

    # connections that are logging in or in a discovery session: all of them, and from
    # one address (an IPv6 peer counts per /64)
    max_logins: int = 256
    max_logins_per_address: int = 8
    login_timeout: float = 30.0
    discovery_idle: float = 30.0  # a discovery session that sends nothing this long ends
    discovery_lifetime: float = 600.0  # and none lasts longer
    max_sessions_per_initiator: int = 16  # sessions of one initiator name per target; 0: any
    login_brake: float = 10.0  # the longest hold of an answer to a guessing address; 0: off
    chap_algorithms: tuple[int, ...] = tuple(chap.ALGORITHMS)


def address_key(ip: str) -> str:
    """What limits and the brake count by: the address, or an IPv6 address's /64."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class Throttled:
    """A recurring event logged at most once per interval, with how often it happened."""

    def __init__(self, interval: float = REPORT_INTERVAL) -> None:
        self.interval = interval
        self._next = -math.inf
        self._count = 0

    def log(self, level: int, message: str, *args: object) -> None:
        now = trio.current_time()
        self._count += 1
        if now < self._next:
            return
        if self._count > 1:
            message += f" ({self._count} times in the last {self.interval:.0f}s)"
        else:
            message += f" (reported at most once every {self.interval:.0f}s)"
        log.log(level, message, *args)
        self._count = 0
        self._next = now + self.interval


@dataclass
class _Guesses:
    failures: list[float] = field(default_factory=list)
    next_answer: float = -math.inf


class LoginBrake:
    """Slows down guessing of secrets and names, per address (IPv6: per /64).

    Two failed logins in a minute are free. After that the address is penalised: every
    answer that settles a login there, failure or success alike, is held, the k-th one
    past the free ones for 2**(k-1) seconds up to ``max_delay``, and such answers go out
    one after the other, ``hold`` apart, however many logins run in parallel. A right
    guess is therefore not answered sooner than a wrong one. The table holds at most
    ``max_addresses`` addresses, the least recently seen dropped first, and forgets an
    address once its minute has passed. Time is a parameter: this is plain bookkeeping.
    """

    WINDOW = 60.0
    FREE = 2
    KEEP = 64  # failures remembered per address

    def __init__(self, max_delay: float = 10.0, max_addresses: int = 4096) -> None:
        self.max_delay = max_delay
        self.max_addresses = max_addresses
        self._table: OrderedDict[str, _Guesses] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def failures(self, key: str, now: float) -> int:
        g = self._table.get(key)
        return 0 if g is None else sum(1 for t in g.failures if now - t < self.WINDOW)

    def hold(self, key: str, now: float, *, failed: bool) -> float:
        """Seconds to wait before sending an answer that ends a login's authentication
        (``failed``: the login failed, which is counted)."""
        if self.max_delay <= 0:
            return 0.0
        g = self._table.pop(key, None) or _Guesses()
        g.failures = [t for t in g.failures if now - t < self.WINDOW]
        n = len(g.failures) + 1  # this answer, counted as a failure whatever it is
        if failed:
            g.failures = [*g.failures, now][-self.KEEP:]
            if n in (self.FREE + 1, 10, 30):
                log.warning("%s: %d failed logins in the last minute; slowing this address "
                            "down", key, n)
        hold = 0.0
        if n > self.FREE:
            delay = min(2.0 ** (n - self.FREE - 1), self.max_delay)
            g.next_answer = max(now, g.next_answer) + delay
            hold = g.next_answer - now
        self._prune(now)
        if g.failures or g.next_answer > now:
            self._table[key] = g
        return hold

    def _prune(self, now: float) -> None:
        table = self._table
        while table:
            key, g = next(iter(table.items()))
            stale = (not g.failures or now - g.failures[-1] >= self.WINDOW) and \
                g.next_answer <= now
            if not stale and len(table) < self.max_addresses:
                break
            del table[key]


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
        limits: Limits | None = None,
        buffer_limits: BufferLimits | None = None,
    ) -> None:
        self.targets = {t.name: t for t in targets}
        # Serve the connections' sockets through a Poller (the daemon's choice; tests
        # that rely on trio's idle detection run without one).
        self.poll = False
        # command buffers: a budget shared by every session (the process's one pool of
        # them is io.BUFFERS)
        self.buffer_limits = buffer_limits or BufferLimits()
        self.budget = ServerBudget(self.buffer_limits.server_budget)
        self.discovery_users = discovery_users or {}
        self.discovery_outgoing = discovery_outgoing
        self.acl = acl
        self.tpgt = tpgt
        self.sessions = SessionTable()
        self.connections: set[Connection] = set()
        self.addresses: list[tuple[str, int]] = []
        self.limits = limits or Limits()
        self.brake = LoginBrake(self.limits.login_brake)
        self.recent_challenges = chap.RecentChallenges(clock=trio.current_time)
        # connections logging in or in a discovery session, by address key
        self.unproven: dict[str, int] = {}
        self.unproven_total = 0
        self._refused_address = Throttled()
        self._refused_total = Throttled()
        self._accept_trouble = Throttled()
        self._closed_one = trio.Event()
        self._listeners_scope = trio.CancelScope()
        self._tls: dict[int, ssl.SSLContext] = {}
        self.tls_addresses: set[tuple[str, int]] = set()
        self._draining = False
        self._quiet: trio.Event | None = None  # set when a connection's commands end

    # ---------------------------------------------------------------- policy

    def _allowed(self, target: str, initiator: str, address: str, local: str) -> bool:
        if self.acl is None:
            return True
        return self.acl.initiator_allowed(target, initiator, address) and \
            self.acl.portal_allowed(target, local)

    def resolver(
        self, peer_ip: str, local_ip: str, isid: bytes = b""
    ) -> Callable[[str, str, str], TargetLoginConfig | LoginStatus | LoginFailed]:
        def resolve(session_type: str, target_name: str, initiator: str
                    ) -> TargetLoginConfig | LoginStatus | LoginFailed:
            if self._draining:
                return LoginStatus.SERVICE_UNAVAILABLE
            if session_type == "Discovery":
                return TargetLoginConfig(target_name="", incoming=self.discovery_users,
                                         outgoing=self.discovery_outgoing)
            # A target the access lists hide gets the answer of one that does not exist
            # (0x0203, RFC 7143 §11.13.5): the status tells no one which targets exist.
            # The log says which it was.
            t = self.targets.get(target_name)
            if t is None:
                return LoginFailed(f"no target {printable(target_name, 240)} here",
                                   LoginStatus.NOT_FOUND)
            if not self._allowed(t.name, initiator, peer_ip, local_ip):
                return LoginFailed(f"{t.name} is hidden from {initiator} at {peer_ip} by "
                                   "initiators.allow or targets.allow", LoginStatus.NOT_FOUND)
            if t.max_sessions and sum(
                1 for s in self.sessions.sessions.values() if s.target_name == t.name
            ) >= t.max_sessions:
                return LoginStatus.TOO_MANY_CONNECTIONS
            per_initiator = self.limits.max_sessions_per_initiator
            if per_initiator and sum(
                1 for s in self.sessions.sessions.values()
                if s.target_name == t.name and s.initiator_name == initiator
                and s.isid != isid  # a reinstatement replaces its session
            ) >= per_initiator:
                log.warning("%s: %s has %d sessions with %s already "
                            "(--max-sessions-per-initiator %d)", peer_ip, initiator,
                            per_initiator, t.name, per_initiator)
                return LoginStatus.TOO_MANY_CONNECTIONS
            return TargetLoginConfig(target_name=t.name, incoming=t.incoming,
                                     outgoing=t.outgoing, operational=t.operational,
                                     target_alias=t.alias)

        return resolve

    def login_machine(self, peer_ip: str, local_ip: str, isid: bytes) -> TargetLogin:
        """The login state machine for one connection, whose first request came with
        ``isid``."""
        return TargetLogin(
            portal_group_tag=self.tpgt, resolve=self.resolver(peer_ip, local_ip, isid),
            random_bytes=os.urandom, chap_algorithms=self.limits.chap_algorithms,
            challenges=self.recent_challenges, check_session=self.check_session)

    def check_session(self, target_name: str, initiator: str, isid: bytes,
                      chap_user: str | None) -> LoginFailed | None:
        """The CHAP user is part of a session's identity: a login that would reinstate a
        session of another user is refused."""
        if not target_name:
            return None
        old = self.sessions.find(initiator, isid, target_name)
        if old is None or old.chap_user == chap_user:
            return None
        return LoginFailed(
            f"session {old.tsih} of {initiator} (ISID {isid.hex()}) belongs to CHAP user "
            f"{_who(old.chap_user)}, not {_who(chap_user)}: reinstatement refused",
            LoginStatus.AUTHORIZATION_FAILURE)

    def login_hold(self, peer_ip: str, *, failed: bool) -> float:
        """How long to hold an answer that settles a login from this address."""
        return self.brake.hold(address_key(peer_ip), trio.current_time(), failed=failed)

    # ------------------------------------------------------ unproven connections

    def admit(self, key: str, peer: str) -> bool:
        """Take a place for a connection that has proved nothing yet (False: no room)."""
        limits = self.limits
        if self.unproven_total >= limits.max_logins:
            self._refused_total.log(
                logging.WARNING, "%s: connection refused: %d connections are logging in or "
                "in discovery sessions (--max-logins %d)", peer, self.unproven_total,
                limits.max_logins)
            return False
        held = self.unproven.get(key, 0)
        if held >= limits.max_logins_per_address:
            self._refused_address.log(
                logging.WARNING, "%s: connection refused: %d connections from %s are "
                "logging in or in discovery sessions (--max-logins-per-address %d)", peer,
                held, key, limits.max_logins_per_address)
            return False
        self.unproven[key] = held + 1
        self.unproven_total += 1
        return True

    def release(self, key: str) -> None:
        held = self.unproven.get(key, 0) - 1
        if held > 0:
            self.unproven[key] = held
        else:
            self.unproven.pop(key, None)
        self.unproven_total -= 1

    def send_targets(
        self, value: str, session: object, peer_ip: str, local: str, *, tls: bool = False
    ) -> list[tuple[str, str]]:
        """The answer to SendTargets=``value``.

        A discovery session sees every target the access lists let it see.  A normal
        session sees the same where discovery needs no CHAP; where it does, a normal
        session (which did not pass discovery's CHAP) sees its own target only.  Each
        target is listed with the portals of the kind this connection came in on: TLS
        portals to a TLS connection, plain ones to a plain one.
        """
        from .session import Session

        assert isinstance(session, Session)
        local_ip = local.rsplit(":", 1)[0].strip("[]")
        if value == "All":
            names = list(self.targets)
        elif value == "":
            names = [session.target_name] if session.target_name else []
        else:
            names = [value] if value in self.targets else []
        if not session.discovery and self.discovery_users:
            names = [n for n in names if n == session.target_name]
        out: list[tuple[str, str]] = []
        for name in names:
            if not self._allowed(name, session.initiator_name, peer_ip, local_ip):
                continue
            out.append(("TargetName", name))
            for host, port in self._portal_addresses(local, tls):
                out.append(("TargetAddress", f"{format_address(host, port)},{self.tpgt}"))
        return out

    def _portal_addresses(self, local: str, tls: bool = False) -> list[tuple[str, int]]:
        host, _, _port = local.rpartition(":")
        host = host.strip("[]")
        result = []
        for h, p in self.addresses:
            if ((h, p) in self.tls_addresses) != tls:
                continue
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
            if self.poll:
                await handlers.start(Poller().run)
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
                    # Out of descriptors (or memory): new connections wait in the listen
                    # queue until one closes, instead of a failed accept in a tight loop.
                    self._accept_trouble.log(
                        logging.ERROR, "accepting connections paused: %s; raise LimitNOFILE "
                        "or lower --max-logins (docs/security.md)", exc.strerror or exc)
                    with trio.move_on_after(ACCEPT_PAUSE):
                        await self._closed_one.wait()
                    continue
                raise
            handlers.start_soon(self._handle, stream, self._tls.get(id(listener)))

    async def _handle(self, tcp: trio.SocketStream, tls: ssl.SSLContext | None) -> None:
        try:
            peer = tcp.socket.getpeername()
        except OSError:
            await tcp.aclose()
            self._one_closed()
            return
        key = address_key(peer[0])
        if not self.admit(key, format_address(peer[0], peer[1])):
            await tcp.aclose()
            self._one_closed()
            return
        conn: Connection | None = None
        try:
            conn = await self._connection(tcp, tls, peer, key)
            if conn is None:
                return
            self.connections.add(conn)
            log.debug("%s: connected", conn.peer)
            await conn.run()
        except Exception:
            log.exception("%s: internal error; connection dropped",
                          format_address(peer[0], peer[1]))
        finally:
            if conn is not None:
                self.connections.discard(conn)
            if conn is None or conn.unproven:
                self.release(key)
            self._one_closed()

    def _one_closed(self) -> None:
        closed, self._closed_one = self._closed_one, trio.Event()
        closed.set()

    async def _connection(self, tcp: trio.SocketStream, tls: ssl.SSLContext | None,
                          peer: tuple[str, int], key: str) -> Connection | None:
        try:
            tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            local = tcp.socket.getsockname()
        except OSError:
            await tcp.aclose()
            return None
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
                return None
            stream = ssl_stream
        return Connection(self, stream, format_address(peer[0], peer[1]),
                          format_address(local[0], local[1]), address_key=key)

    def shutdown(self) -> None:
        """Stop accepting; in-flight commands finish, then sessions close."""
        self._draining = True
        self._listeners_scope.cancel()

    def connection_quiet(self) -> None:
        """A connection finished its last command (or closed): a drain may be over."""
        if self._quiet is not None:
            self._quiet.set()

    async def _drain(self) -> None:
        with trio.move_on_after(SHUTDOWN_GRACE):
            while any(c.busy for c in self.connections):
                self._quiet = trio.Event()
                await self._quiet.wait()
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


def _who(user: str | None) -> str:
    return repr(user) if user is not None else "(none)"
