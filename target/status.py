"""What the daemon is doing, in lines for the log: the answer to SIGUSR1.

The report names every target with its LUNs, every session with its initiator and
connections, the commands each connection has in flight, and the command-buffer memory
in use, as ``tgtadm --op show`` does for tgtd.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .server import format_address

if TYPE_CHECKING:
    from .connection import Connection
    from .lun import LogicalUnit
    from .server import TargetServer
    from .session import Session


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def serving(server: TargetServer) -> str:
    """What is served where, in one line: the systemd status and the report's first."""
    luns = sum(len(t.luns) for t in server.targets.values())
    listening = ", ".join(format_address(h, p) for h, p in server.addresses) or "nothing"
    return f"{len(server.targets)} target(s), {luns} LUN(s) on {listening}"


def describe_lun(lu: LogicalUnit) -> str:
    return (f"{lu.backend.description}, {lu.size_bytes} bytes"
            + (", read-only" if lu.read_only else ""))


def status_lines(server: TargetServer) -> list[str]:
    sessions = sorted(server.sessions.sessions.values(), key=lambda s: s.tsih)
    logging_in = sum(1 for c in server.connections if c.session is None)
    lines = [
        f"status: serving {serving(server)}; "
        f"{sum(not s.discovery for s in sessions)} session(s), "
        f"{len(server.connections)} connection(s) ({logging_in} logging in)",
        f"command buffers: {_mib(server.budget.used)} of {_mib(server.budget.limit)} in use",
    ]
    for name in sorted(server.targets):
        target = server.targets[name]
        lines.append(f"target {name}" + (f" ({target.alias})" if target.alias else ""))
        for number in sorted(target.luns):
            lines.append(f"  LUN {number}: {describe_lun(target.luns[number])}")
        for s in sessions:
            if s.target_name == name and not s.discovery:
                lines += _session(s)
    discovery = [s for s in sessions if s.discovery]
    if discovery:
        lines.append(f"discovery: {len(discovery)} session(s)")
        for s in discovery:
            lines += _session(s)
    return lines


def _session(s: Session) -> list[str]:
    who = f"  session {s.tsih}: {s.initiator_name}, ISID {s.isid.hex()}"
    if s.chap_user is not None:
        who += f", CHAP user {s.chap_user}"
    return [who, *(_connection(c) for c in s.connections)]


def _connection(c: Connection) -> str:
    in_flight = c.machine.window.in_flight if c.machine is not None else 0
    return (f"    connection {c.peer} -> {c.local}{' (TLS)' if c.tls else ''}: "
            f"{in_flight} command(s) in flight")
