"""blockbridge-target: serve files and block devices as iSCSI LUNs."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import resource
import signal
import socket
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from blockbridge.iscsi import chap
from blockbridge.iscsi.chap import MIN_SECRET_LENGTH
from blockbridge.iscsi.portal import split_portal
from blockbridge.systemd import notify
from blockbridge.tls import TLSError, generate_self_signed, server_context

from .acl import AccessControl
from .backends.registry import parse_size as parse_size_value
from .budget import (
    DEFAULT_DATA_OUT_TIMEOUT,
    DEFAULT_SERVER_BUDGET,
    DEFAULT_SESSION_BUDGET,
    BufferLimits,
)
from .config import MAX_NAME_BYTES, ConfigError, LunConfig, default_config_path, parse_lun
from .configured import StartupError, open_backend, reload_config, server_from_config
from .lun import LogicalUnit
from .server import Limits, ListenError, TargetServer, format_address
from .status import describe_lun, serving, status_lines
from .targets import TargetDef

log = logging.getLogger("blockbridge_target")

DESCRIPTION = """\
Serve files and block devices as iSCSI logical units to any initiator (open-iscsi,
libiscsi, qemu, blockbridge). Configure it with a classic IET ietd.conf, or serve a single
disk image straight from the command line with --disk.
"""

EPILOG = """\
examples:
  Serve one sparse 1 GiB image (created if missing) on the loopback interface:
    blockbridge-target --disk demo.img --size 1G --portal 127.0.0.1:3260

  Serve what an existing iscsitarget installation serves:
    blockbridge-target -c /etc/iet/ietd.conf --initiators-allow /etc/iet/initiators.allow

  Listen on every IPv4 and IPv6 address, on a free port chosen by the system:
    blockbridge-target --disk vm.img --portal 0.0.0.0:0 --portal [::]:0

Once every portal listens, one line per portal is printed on standard output:
  listening on HOST:PORT
SIGTERM or SIGINT stop the target: new logins are refused, commands in flight finish
and are synced to disk, then sessions close. SIGHUP re-reads the configuration file.
SIGUSR1 logs the status: targets, LUNs, sessions with their initiators and connections,
commands in flight and command-buffer memory in use.

exit status: 0 after a clean shutdown, 2 for a configuration or startup error.
"""



class UsageError(Exception):
    """A mistake on the command line or in the configuration: one line for the user."""


def parse_size(text: str) -> int:
    try:
        return parse_size_value(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def parse_portal(text: str) -> tuple[str, int]:
    portal = split_portal(text)
    if portal is None:
        raise UsageError(f"invalid portal {text!r}: use HOST:PORT, e.g. 0.0.0.0:3260 or [::]:3260")
    if portal[1] > 65535:
        raise UsageError(f"invalid port in {text!r}")
    return portal


def default_iqn(disk: Path) -> str:
    host = re.sub(r"[^a-z0-9.-]", "-", socket.gethostname().lower()) or "localhost"
    stem = re.sub(r"[^a-z0-9.-]", "-", disk.stem.lower()) or "disk"
    return f"iqn.2026-11.local.blockbridge:{host}.{stem}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="blockbridge-target", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("what to serve")
    src.add_argument("-c", "--config", metavar="FILE", type=Path,
                     help="IET-style configuration (default: /etc/iet/ietd.conf, then "
                          "/etc/ietd.conf, unless --disk is given)")
    src.add_argument("--disk", metavar="FILE", type=Path,
                     help="serve this file or block device as LUN 0 of one target")
    src.add_argument("--lun", metavar="PARAMS",
                     help="serve this backend as LUN 0 of one target, written as on an "
                          "ietd.conf Lun line, e.g. Type=memory,Size=1G or "
                          "Type=nbd,Uri=nbd://localhost/disk")
    src.add_argument("--size", metavar="SIZE",
                     help="with --disk: create the file sparse with this size if it does not "
                          "exist (e.g. 1G)")
    src.add_argument("--target-name", metavar="IQN",
                     help="with --disk: the target name (default: derived from the host name "
                          "and the file name)")
    src.add_argument("--read-only", action="store_true", help="with --disk: refuse writes")
    src.add_argument("--block-size", type=int, default=512, choices=(512, 1024, 2048, 4096),
                     help="with --disk: logical block size (default 512)")
    src.add_argument("--write-through", action="store_true",
                     help="with --disk: sync every write to disk before acknowledging it "
                          "(default: honour the initiator's cache flushes, like IOMode=wb)")
    acl = p.add_argument_group("access control")
    acl.add_argument("--initiators-allow", metavar="FILE", type=Path,
                     help="IET initiators.allow file (default: /etc/iet/initiators.allow if "
                          "it exists)")
    acl.add_argument("--refuse-weak-secrets", action="store_true",
                     help="refuse to start when a CHAP secret is shorter than "
                          f"{MIN_SECRET_LENGTH} characters (default: warn, as RFC 7143 "
                          f"recommends {MIN_SECRET_LENGTH} or more)")
    acl.add_argument("--targets-allow", metavar="FILE", type=Path,
                     help="IET targets.allow file")
    acl.add_argument("--chap-digests", metavar="LIST", default="SHA3-256,SHA-256,SHA-1,MD5",
                     help="CHAP digests to accept, e.g. SHA-256,SHA-1 to refuse MD5 "
                          "(default: SHA3-256,SHA-256,SHA-1,MD5)")
    acl.add_argument("--login-brake", metavar="SECONDS", type=float,
                     default=Limits.login_brake,
                     help="after repeated failed logins from an address, hold every answer "
                          "that settles a login there for up to this long, one at a time "
                          "(default %(default)g; 0 turns the brake off)")
    lim = p.add_argument_group("limits (docs/security.md)")
    lim.add_argument("--max-logins", metavar="N", type=int, default=Limits.max_logins,
                     help="connections that are logging in or in a discovery session, from "
                          "all addresses (default %(default)d)")
    lim.add_argument("--max-logins-per-address", metavar="N", type=int,
                     default=Limits.max_logins_per_address,
                     help="the same from one address, an IPv6 one counted per /64 "
                          "(default %(default)d)")
    lim.add_argument("--login-timeout", metavar="SECONDS", type=float,
                     default=Limits.login_timeout,
                     help="a login must complete within this time (default %(default)g)")
    lim.add_argument("--discovery-idle", metavar="SECONDS", type=float,
                     default=Limits.discovery_idle,
                     help="close a discovery session that sends nothing for this long "
                          "(default %(default)g)")
    lim.add_argument("--discovery-lifetime", metavar="SECONDS", type=float,
                     default=Limits.discovery_lifetime,
                     help="close any discovery session after this long (default %(default)g)")
    lim.add_argument("--max-sessions-per-initiator", metavar="N", type=int,
                     default=Limits.max_sessions_per_initiator,
                     help="sessions one initiator name may have with one target (default "
                          "%(default)d; 0: no limit; MaxSessions in ietd.conf caps a target)")
    net = p.add_argument_group("network")
    net.add_argument("--tls-portal", metavar="HOST:PORT", action="append", default=[],
                     help="address to listen on with TLS (needs --tls-cert and --tls-key); "
                          "repeatable")
    net.add_argument("--tls-cert", metavar="FILE", help="PEM certificate for TLS portals")
    net.add_argument("--tls-key", metavar="FILE", help="PEM private key for TLS portals")
    net.add_argument("--tls-client-ca", metavar="FILE",
                     help="require TLS client certificates signed by this CA")
    net.add_argument("--generate-cert", metavar="DIR",
                     help="write a self-signed key pair (blockbridge.crt, blockbridge.key) "
                          "into DIR, print its fingerprint and exit")
    net.add_argument("-p", "--portal", metavar="HOST:PORT", action="append",
                     help="address to listen on; repeatable; port 0 picks a free port "
                          "(default 0.0.0.0:3260)")
    lim = p.add_argument_group("limits")
    lim.add_argument("--buffer-budget", metavar="SIZE",
                     default=f"{DEFAULT_SERVER_BUDGET >> 20}M",
                     help="memory for the data of commands in flight, all sessions together "
                          "(write data being received, read data not yet sent); commands "
                          "beyond it wait (default %(default)s)")
    lim.add_argument("--session-buffer-budget", metavar="SIZE",
                     default=f"{DEFAULT_SESSION_BUDGET >> 20}M",
                     help="the same for one session; at least the largest transfer a "
                          "command may ask, 32M (default %(default)s)")
    lim.add_argument("--data-out-timeout", metavar="SECONDS", type=float,
                     default=DEFAULT_DATA_OUT_TIMEOUT,
                     help="end a write whose data stops coming for this long, and a "
                          "command that waits this long for buffer memory (default "
                          "%(default)gs)")
    out = p.add_argument_group("logging")
    out.add_argument("-v", "--verbose", action="count", default=0,
                     help="more log output (-vv for protocol debugging)")
    out.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                     help="set the log level explicitly")
    out.add_argument("--pid-file", metavar="FILE", type=Path, help="write the process id here")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return p


def _version() -> str:
    from blockbridge import __version__

    return __version__


def limits(args: argparse.Namespace) -> Limits:
    try:
        algorithms = chap.parse_digests(args.chap_digests)
    except ValueError as exc:
        raise UsageError(f"--chap-digests: {exc}") from None
    for name in ("max_logins", "max_logins_per_address"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("login_timeout", "discovery_idle", "discovery_lifetime"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be more than 0 seconds")
    if args.max_sessions_per_initiator < 0 or args.login_brake < 0:
        raise UsageError("--max-sessions-per-initiator and --login-brake cannot be negative")
    return Limits(
        max_logins=args.max_logins, max_logins_per_address=args.max_logins_per_address,
        login_timeout=args.login_timeout, discovery_idle=args.discovery_idle,
        discovery_lifetime=args.discovery_lifetime,
        max_sessions_per_initiator=args.max_sessions_per_initiator,
        login_brake=args.login_brake, chap_algorithms=algorithms)


DESCRIPTOR_MARGIN = 64  # listeners, logs, io_uring, the configuration: besides connections


def raise_descriptor_limit(lim: Limits, luns: int) -> None:
    """Take the hard limit on open files as the soft one, and warn when even that leaves
    too little room for the connections the limits allow (the sizing rule of
    docs/security.md: max-logins + sessions + LUNs + 64)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    need = lim.max_logins + luns + DESCRIPTOR_MARGIN
    if soft != resource.RLIM_INFINITY and soft < need:
        log.warning("the limit on open files is %d, less than --max-logins %d + %d LUN(s) "
                    "+ %d: new connections will be paused when it is reached; raise "
                    "LimitNOFILE or lower --max-logins", soft, lim.max_logins, luns,
                    DESCRIPTOR_MARGIN)


def buffer_limits(args: argparse.Namespace) -> BufferLimits:
    """The budgets and the Data-Out timeout of the command line, checked."""
    server = parse_size(args.buffer_budget)
    session = parse_size(args.session_buffer_budget)
    largest = LogicalUnit.DEFAULT_MAX_TRANSFER
    if session < largest:
        raise UsageError(f"--session-buffer-budget {args.session_buffer_budget} is smaller "
                         f"than the largest transfer of one command ({largest >> 20}M)")
    if server < session:
        raise UsageError(f"--buffer-budget {args.buffer_budget} is smaller than "
                         f"--session-buffer-budget {args.session_buffer_budget}")
    timeout = args.data_out_timeout
    if not 0.1 <= timeout <= 3600:
        raise UsageError(f"--data-out-timeout {timeout:g} is outside 0.1..3600 seconds")
    return BufferLimits(server, session, timeout)


def quick_lun(args: argparse.Namespace) -> tuple[LunConfig, str]:
    """The Lun of --disk or --lun, checked as a Lun line is, and a name for its target."""
    mode = "ro" if args.read_only else "wt" if args.write_through else "wb"
    common = f"IOMode={mode},BlockSize={args.block_size}"
    if args.lun is not None:
        try:
            lun = parse_lun(["0", f"{args.lun},{common}"], "--lun", 0)
        except ConfigError as exc:
            hint = f" ({exc.hint})" if exc.hint else ""
            raise UsageError(f"--lun {args.lun}: {exc.message}{hint}") from None
        return lun, lun.type
    disk: Path = args.disk
    create = parse_size(args.size) if args.size else None
    if create is None and not disk.exists():
        raise UsageError(f"{disk} does not exist: give --size to create it, e.g. --size 1G")
    if create is not None and disk.exists() and disk.stat().st_size not in (0, create) \
            and disk.is_file():
        log.warning("%s exists with %d bytes; --size %s ignored", disk, disk.stat().st_size,
                    args.size)
    options = {"path": str(disk), "create_size": create}
    return LunConfig(0, str(disk), "fileio", mode, block_size=args.block_size,
                     options=options), disk.stem


def quick_target(args: argparse.Namespace) -> TargetDef:
    lun, stem = quick_lun(args)
    name = args.target_name or default_iqn(Path(stem))
    if not re.match(r"^(iqn\.\d{4}-\d{2}\.|eui\.|naa\.)", name):
        raise UsageError(f"invalid target name {name!r}: use iqn.YYYY-MM.reversed.domain:name")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise UsageError(f"target name is longer than {MAX_NAME_BYTES} bytes")
    try:
        backend = open_backend(lun, "--lun" if args.lun is not None else str(args.disk))
    except StartupError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot open {args.disk}: {exc.strerror}") from None
    lu = LogicalUnit(0, backend, target_name=name, block_size=lun.block_size,
                     read_only=lun.iomode == "ro", write_cache=lun.iomode == "wb")
    return TargetDef(name=name, luns={0: lu})


def setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING - 10 * min(args.verbose, 2) if not args.log_level else \
        getattr(logging, args.log_level.upper())
    if not args.log_level and args.verbose == 0:
        level = logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


async def run(server: TargetServer, portals: list[tuple[str, int]],
              tls_portals: list[tuple[str, int]], tls: ssl.SSLContext | None,
              config: Path | None = None, refuse_weak_secrets: bool = False) -> None:
    listeners = await server.open_listeners(portals) if portals else []
    if tls_portals:
        listeners += await server.open_listeners(tls_portals, tls)
    server.poll = True
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(server.serve_listeners, listeners)
        # Signals are caught before anyone can learn that we listen (READY, the log
        # line): a SIGTERM right after READY must drain, not kill.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                                        signal.SIGUSR1) as signals:
            for host, port in addresses:
                kind = " (TLS)" if (host, port) in server.tls_addresses else ""
                print(f"listening on {format_address(host, port)}{kind}", flush=True)

            def status() -> str:
                return f"STATUS=serving {serving(server)}"

            notify("READY=1", status())
            for t in server.targets.values():
                for lu in t.luns.values():
                    log.info("target %s LUN %d: %s", t.name, lu.number, describe_lun(lu))
            async for sig in signals:
                if sig == signal.SIGUSR1:
                    for line in status_lines(server):
                        log.info("%s", line)
                    continue
                if sig == signal.SIGHUP:
                    if config is None:
                        log.info("SIGHUP: nothing to reload in --disk mode")
                        continue
                    notify("RELOADING=1")
                    try:
                        changes = reload_config(server, config,
                                                refuse_weak_secrets=refuse_weak_secrets)
                        log.info("reloaded %s: %s", config, "; ".join(changes) or "no change")
                    except (ConfigError, StartupError) as exc:
                        log.error("reload failed, keeping the running configuration: %s", exc)
                    notify("READY=1", status())
                    continue
                log.info("%s received: finishing commands in flight and shutting down",
                         signal.Signals(sig).name)
                notify("STOPPING=1", "STATUS=finishing commands in flight")
                server.shutdown()
                break


def load_targets(args: argparse.Namespace) -> TargetServer:
    lim = limits(args)
    buffers = buffer_limits(args)
    if args.disk is not None or args.lun is not None:
        if (args.config is not None) + (args.disk is not None) + (args.lun is not None) > 1:
            raise UsageError("give one of --disk, --lun and --config")
        return TargetServer([quick_target(args)], acl=load_acl(args), limits=lim,
                            buffer_limits=buffers)
    return server_from_config(args.config, load_acl(args),
                              refuse_weak_secrets=args.refuse_weak_secrets, limits=lim,
                              buffer_limits=buffers)


def load_acl(args: argparse.Namespace) -> AccessControl | None:
    if args.initiators_allow is None and args.targets_allow is None:
        return None
    for path in (args.initiators_allow, args.targets_allow):
        if path is not None and not path.exists():
            raise UsageError(f"access list {path} does not exist")
    return AccessControl(args.initiators_allow, args.targets_allow)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    if args.generate_cert:
        crt, key, fp = generate_self_signed(Path(args.generate_cert))
        print(f"certificate {crt}\nkey         {key}\nfingerprint {fp}")
        return 0
    try:
        tls_portals = [parse_portal(p) for p in args.tls_portal]
        default = [] if tls_portals else ["0.0.0.0:3260"]
        portals = [parse_portal(p) for p in (args.portal or default)]
        tls = None
        if tls_portals:
            if not (args.tls_cert and args.tls_key):
                raise UsageError("--tls-portal needs --tls-cert and --tls-key (make a pair "
                                 "with --generate-cert DIR)")
            tls = server_context(args.tls_cert, args.tls_key, args.tls_client_ca)
        server = load_targets(args)
        raise_descriptor_limit(server.limits,
                               sum(len(t.luns) for t in server.targets.values()))
        if args.pid_file:
            args.pid_file.write_text(f"{os.getpid()}\n")
        config = None
        if args.disk is None and args.lun is None:
            config = args.config or default_config_path()
        trio.run(run, server, portals, tls_portals, tls, config, args.refuse_weak_secrets)
    except UsageError as exc:
        print(f"blockbridge-target: {exc}", file=sys.stderr)
        return 2
    except (ListenError, ConfigError, StartupError, TLSError) as exc:
        print(f"blockbridge-target: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if args.pid_file:
            with contextlib.suppress(OSError):
                args.pid_file.unlink()
    return 0
