"""blockbridge: use iSCSI LUNs as plain files, without kernel iSCSI and without root."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import trio

from . import __version__
from .copy import CopyError
from .credentials import Credentials, CredentialsError, from_options, lookup
from .fuse.engines import DEFAULT as DEFAULT_ENGINE
from .fuse.engines import ENGINES
from .initiator.errors import InitiatorError
from .iscsi import chap
from .iscsi.errors import ISCSIError
from .iscsi.names import name_problem, printable
from .iscsi.portal import split_portal
from .mount import MountError, MountRequest, discover, serve
from .state import (
    RuntimeDirError,
    config_dir,
    initiator_name,
    initiator_name_path,
    log_file_for,
    records,
)
from .tls import ClientTLS, TLSError, normalise_fingerprint

log = logging.getLogger("blockbridge")

DESCRIPTION = """\
Discover iSCSI targets and mount their LUNs as plain files under a FUSE mount point,
in user space: no kernel iSCSI initiator, no root for the mount. Each LUN appears as
MOUNTPOINT/<target-iqn>/lun<N>, as large as the LUN; reads, writes and fsync go to the
target. Attach a file with losetup or udisksctl loop-setup, give it to qemu, or read it.
"""

EPILOG = """\
commands:
  discover HOST[:PORT]           list the targets a portal offers (SendTargets)
  mount HOST[:PORT] MOUNTPOINT   log in to the targets and mount their LUNs as files
  umount MOUNTPOINT              flush, log out and unmount
  status [MOUNTPOINT]            show mounts, sessions and per-LUN I/O counters
  discard FILE [--offset --length]   trim a region of a LUN file on the target
  rescan MOUNTPOINT              read the LUNs and their sizes from the targets again
  cp IMAGE LUNFILE               copy a disk image onto a LUN file, with progress

examples:
  blockbridge discover filer.network.local
  blockbridge mount filer.network.local ~/luns
  losetup --find --show ~/luns/iqn.2010-filer.network.local:iscsi.lun1/lun0
  blockbridge umount ~/luns

Run 'blockbridge COMMAND --help' for the options of a command.
"""


class UsageError(Exception):
    pass


USER_ERRORS: tuple[type[Exception], ...] = (
    UsageError, MountError, InitiatorError, ISCSIError, CredentialsError, TLSError, CopyError,
    RuntimeDirError)


def user_error(exc: BaseException, kinds: tuple[type[Exception], ...] = USER_ERRORS
               ) -> BaseException | None:
    """The error to show the user as one line, or None for a bug.  Trio wraps what a task
    raises inside a nursery in exception groups; a single user error inside them counts
    as itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, kinds) else None


def parse_portal(text: str) -> tuple[str, int]:
    portal = split_portal(text)
    if portal is None:
        raise UsageError(f"invalid portal {text!r}: use HOST or HOST:PORT")
    return portal


AUTH_HELP = ("CHAP credentials: a TOML file readable only by you (default: "
             "~/.config/blockbridge/credentials.toml if it exists); secrets are never taken "
             "from the command line")


def add_tls_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("TLS")
    g.add_argument("--tls", action="store_true", help="connect to the portal through TLS")
    g.add_argument("--tls-ca", metavar="FILE",
                   help="verify the target's certificate against this CA file")
    g.add_argument("--tls-fingerprint", metavar="SHA256:HEX",
                   help="accept exactly the certificate with this fingerprint")
    g.add_argument("--tls-client-cert", metavar="FILE",
                   help="client certificate (PEM) for portals that require one")
    g.add_argument("--tls-client-key", metavar="FILE", help="key of the client certificate")
    g.add_argument("--tls-accept-new", action="store_true",
                   help="trust a target seen for the first time and remember its certificate "
                        "in ~/.config/blockbridge/known_hosts (later changes are refused)")


def add_chap_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chap-digests", metavar="LIST", default="SHA-256,SHA-1,MD5",
                   help="CHAP digests to offer, in order of preference; e.g. SHA-256,SHA-1 "
                        "refuses MD5 (default: SHA-256,SHA-1,MD5)")


def chap_digests(args: argparse.Namespace) -> tuple[int, ...]:
    try:
        return chap.parse_digests(args.chap_digests)
    except ValueError as exc:
        raise UsageError(f"--chap-digests: {exc}") from None


def tls_options(args: argparse.Namespace) -> ClientTLS | None:
    if not (args.tls or args.tls_ca or args.tls_fingerprint or args.tls_accept_new
            or args.tls_client_cert):
        return None
    pinned = normalise_fingerprint(args.tls_fingerprint) if args.tls_fingerprint else None
    known = None if args.tls_ca else config_dir() / "known_hosts"
    return ClientTLS(ca_file=args.tls_ca, pinned=pinned, known_hosts=known,
                     accept_new=args.tls_accept_new, cert_file=args.tls_client_cert,
                     key_file=args.tls_client_key)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="blockbridge", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("discover", help="list the targets of a portal",
                       description="List the targets a portal offers, with their addresses.")
    d.add_argument("portal", metavar="HOST[:PORT]")
    d.add_argument("-l", "--luns", action="store_true",
                   help="also log in to each target and list its disk LUNs with their sizes")
    d.add_argument("--auth-file", metavar="FILE", help=AUTH_HELP)
    d.add_argument("--auth-env", metavar="VAR",
                   help="read the credentials TOML from this environment variable")
    add_chap_option(d)
    add_tls_options(d)
    d.add_argument("--initiator-name", metavar="IQN", help="our iSCSI name (default: stored "
                   "in the user's config directory, created on first use)")

    m = sub.add_parser(
        "mount", help="mount the LUNs of a portal as files",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Log in to every target of a portal (or the ones named with --target) "
                    "and expose each LUN as MOUNTPOINT/<target>/lun<N>.\nWithout --foreground "
                    "the command returns once the mount is ready and keeps serving in the "
                    "background.",
        epilog="examples:\n  blockbridge mount 192.168.1.10 /mnt/luns\n"
               "  blockbridge mount filer:3260 ~/luns --target iqn.2010-filer.network.local:"
               "iscsi.lun1 -o ro")
    m.add_argument("portal", metavar="HOST[:PORT]")
    m.add_argument("mountpoint", metavar="MOUNTPOINT")
    m.add_argument("-t", "--target", action="append", default=[], metavar="IQN",
                   help="mount only this target (repeatable)")
    m.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                   help="comma-separated mount options: ro, allow_other, and FUSE options "
                   "(max_read=N: the largest read; by default what one READ of every LUN "
                   "carries)")
    m.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground; unmount on Ctrl-C")
    m.add_argument("--initiator-name", metavar="IQN", help="our iSCSI name")
    m.add_argument("--auth-file", metavar="FILE", help=AUTH_HELP)
    m.add_argument("--auth-env", metavar="VAR",
                   help="read the credentials TOML from this environment variable")
    add_chap_option(m)
    add_tls_options(m)
    m.add_argument("--replacement-timeout", metavar="SECONDS", type=float, default=120.0,
                   help="when the target is unreachable, hold I/O this long while "
                        "reconnecting before failing it with EIO (default 120, like "
                        "open-iscsi)")
    m.add_argument("--nop-interval", metavar="SECONDS", type=float, default=5.0,
                   help="ping an idle target this often; a target that does not answer "
                        "within the same time is considered gone and the session "
                        "reconnects (default 5)")
    m.add_argument("--idle-check", metavar="SECONDS", type=float, default=2.0,
                   help="send TEST UNIT READY to each LUN that had no I/O for this long, so "
                        "that a change the target reports (a LUN grown, added or removed) "
                        "reaches the files within this time even when nobody uses them; 0: "
                        "only through I/O and `blockbridge rescan` (default 2)")
    m.add_argument("--fuse-engine", choices=ENGINES,
                   default=os.environ.get("BLOCKBRIDGE_FUSE_ENGINE") or DEFAULT_ENGINE,
                   help="what serves the FUSE file system: blockbridge (our own, the "
                        "default: discard, holes, 1 MiB requests) or pyfuse3 (libfuse); "
                        "the environment variable BLOCKBRIDGE_FUSE_ENGINE sets the default")
    m.add_argument("--log-file", metavar="FILE",
                   help="log here when in the background (default: "
                        "~/.local/state/blockbridge/log/mount-<mount point>.log; "
                        "`blockbridge status` shows it)")

    u = sub.add_parser("umount", help="flush, log out and unmount",
                       description="Flush every LUN (SYNCHRONIZE CACHE), log out and unmount.")
    u.add_argument("mountpoint", metavar="MOUNTPOINT")

    dc = sub.add_parser(
        "discard", help="deallocate (trim) a region of a LUN file",
        description="Ask the target to deallocate a byte range of a mounted LUN file with "
                    "UNMAP (FUSE cannot pass hole punching through, so fstrim on a loop "
                    "device above the file does not reach the target). Only whole unmap "
                    "granules inside the range are deallocated; they read back as zeros.")
    dc.add_argument("file", metavar="FILE", help="a LUN file under a blockbridge mount")
    dc.add_argument("--offset", type=int, default=0, help="start of the range in bytes")
    dc.add_argument("--length", type=int, help="length in bytes (default: to the end)")

    cp = sub.add_parser(
        "cp", help="copy a disk image onto a LUN file, with progress",
        description="Copy a disk image (raw) onto the start of a LUN file, or any file at "
                    "least as large, showing progress on a terminal. Holes in the image are "
                    "not read; the matching range of the LUN is written with zeros, which "
                    "thin LUNs deallocate (UNMAP). Ends with fsync: when the command "
                    "returns, the data is on the target's disk.",
        epilog="example:\n  blockbridge cp debian.raw ~/luns/iqn.2026-01.filer:vm1/lun0",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    cp.add_argument("image", metavar="IMAGE", help="the raw image to copy")
    cp.add_argument("dest", metavar="LUNFILE", help="the LUN file (or file) to copy onto")

    rs = sub.add_parser(
        "rescan", help="read the LUNs and their sizes from the targets again",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Ask a running mount to read the LUN list (REPORT LUNS) and the size of every LUN\n"
            "(READ CAPACITY) of its targets again, and to update its files: a LUN that grew\n"
            "shows its new size, a new LUN appears as a file, a removed one disappears (reads\n"
            "and writes of it, even through a file still open, fail with EIO).\n\n"
            "A mount does this by itself when a target reports a change with a unit attention,\n"
            "as blockbridge-target does on a reload (see --idle-check of mount); this command\n"
            "is for targets that do not. Prints each change, or 'no change'."),
        epilog="example:\n  truncate -s +64M /srv/disk.img && systemctl reload "
               "blockbridge-target\n  blockbridge rescan ~/luns\n"
               "  sudo losetup -c /dev/loop0     # a loop device on the LUN file sees the "
               "new size")
    rs.add_argument("mountpoint", metavar="MOUNTPOINT",
                    help="the mount point of a running mount (see blockbridge status)")

    st = sub.add_parser("status", help="show mounts, sessions and I/O counters",
                        description="Show every blockbridge mount of this user (or the one "
                                    "at MOUNTPOINT) with its sessions and per-LUN I/O "
                                    "counters.")
    st.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?",
                    help="show only the mount at this mount point")
    return p


def our_name(args: argparse.Namespace) -> str:
    """Our initiator name: --initiator-name, else the stored one; a valid iSCSI name
    (RFC 3720 §3.2.6) or a usage error."""
    if args.initiator_name:
        problem = name_problem(args.initiator_name)
        if problem is not None:
            raise UsageError(f"--initiator-name '{printable(args.initiator_name, 80)}' is not "
                             f"a valid iSCSI name: {problem} (e.g. iqn.2026-11.com.example:host)")
        return str(args.initiator_name)
    name = initiator_name()
    problem = name_problem(name)
    if problem is not None:
        path = initiator_name_path()
        raise UsageError(f"{path} holds '{printable(name, 80)}', not a valid iSCSI name: "
                         f"{problem} (fix it, or delete it to get a new one)")
    return name


def cmd_discover(args: argparse.Namespace) -> int:
    host, port = parse_portal(args.portal)
    name = our_name(args)
    table = from_options(args.auth_file, args.auth_env)
    tls = tls_options(args)
    digests = chap_digests(args)
    found = trio.run(discover, host, port, name, table, tls, digests)
    if not found:
        print(f"{host}:{port} offers no targets to {name}")
    for target, addresses in found:
        for addr in addresses or ["(no address given)"]:
            print(f"{printable(addr)} {printable(target)}")  # the target's text, escaped
        if args.luns:
            creds = lookup(table, target)
            for number, size, ro in trio.run(describe_luns, host, port, name, target, creds,
                                             tls, digests):
                print(f"    lun{number}: {size} bytes ({size / 2**30:.2f} GiB)"
                      f"{', read-only' if ro else ''}")
    return 0


async def describe_luns(host: str, port: int, name: str, target: str, creds: Credentials,
                        tls: ClientTLS | None, chap_algorithms: tuple[int, ...]
                        ) -> list[tuple[int, int, bool]]:
    from .initiator.blockdev import BlockDevice, list_disk_luns
    from .initiator.session import Session

    s = await Session.connect(host, port, initiator_name=name, target_name=target,
                              credentials=creds.chap, target_credentials=creds.target,
                              tls=tls, chap_algorithms=chap_algorithms)
    out = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(s.run)
        for info in await list_disk_luns(s):
            if info.device_type == 0:
                dev = await BlockDevice.open(s, info.number)
                out.append((info.number, dev.size, dev.read_only))
        await s.logout()
        nursery.cancel_scope.cancel()
    return out


def _split_options(opts: list[str]) -> tuple[bool, bool, list[str]]:
    ro = allow_other = False
    rest = []
    for group in opts:
        for o in filter(None, (x.strip() for x in group.split(","))):
            if o == "ro":
                ro = True
            elif o == "rw":
                ro = False
            elif o == "allow_other":
                allow_other = True
            else:
                rest.append(o)
    return ro, allow_other, rest


def cmd_mount(args: argparse.Namespace) -> int:
    host, port = parse_portal(args.portal)
    ro, allow_other, fuse_opts = _split_options(args.options)
    if allow_other and os.getuid() != 0:
        try:
            with open("/etc/fuse.conf") as f:
                enabled = any(line.strip() == "user_allow_other" for line in f)
        except OSError:
            enabled = False
        if not enabled:
            raise UsageError("-o allow_other needs 'user_allow_other' in /etc/fuse.conf "
                             "(ask your administrator to add it)")
    req = MountRequest(host, port, os.path.abspath(args.mountpoint),
                       our_name(args), args.target, ro, allow_other,
                       fuse_opts, from_options(args.auth_file, args.auth_env),
                       tls_options(args), args.replacement_timeout,
                       args.nop_interval, args.idle_check,
                       chap_algorithms=chap_digests(args), fuse_engine=args.fuse_engine)
    if args.foreground:
        req.log_file = args.log_file
        trio.run(serve, req, lambda: None)
        return 0
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        with os.fdopen(read_fd) as pipe:
            answer = pipe.read()
        if answer.startswith("OK"):
            return 0
        if not answer:
            os.waitpid(pid, 0)
            answer = "the mount process exited before the mount was ready"
        print(f"blockbridge: {answer.strip()}", file=sys.stderr)
        return 1
    os.close(read_fd)
    os.setsid()
    req.log_file = args.log_file or str(log_file_for(req.mountpoint))
    status = 1
    reported = False

    def ready() -> None:
        nonlocal reported
        os.write(write_fd, b"OK\n")
        os.close(write_fd)
        reported = True
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        try:
            out = os.open(req.log_file or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                          0o600)
        except OSError:
            out = devnull
        os.dup2(out, 1)
        os.dup2(out, 2)
        if not args.quiet and not args.verbose:  # the log file records the mount's story
            logging.getLogger().setLevel(logging.INFO)

    try:
        trio.run(serve, req, ready)
        status = 0
    except BaseException as exc:
        shown = user_error(exc, (*USER_ERRORS, OSError))
        # a bug: say so, never hang the parent
        text = str(shown) if shown is not None else f"internal error: {exc!r}"
        if not reported:
            os.write(write_fd, f"{text}\n".encode())
        elif shown is not None:
            log.error("%s", text)
        else:
            log.critical("%s", text, exc_info=exc)
    os._exit(status)


def cmd_umount(args: argparse.Namespace) -> int:
    target = os.path.abspath(args.mountpoint)
    try:
        recs = records()
    except RuntimeDirError:
        if not os.path.ismount(target):
            raise
        recs = []  # no records to find the process by: unmount, and the process ends
    for rec in recs:
        if rec.get("mountpoint") == target:
            pid = int(rec["pid"])
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return 0
                time.sleep(0.05)
            raise UsageError(f"the mount process {pid} did not finish within 60 s")
    if os.path.ismount(target):
        r = subprocess.run(["fusermount3", "-u", target], capture_output=True, text=True)
        if r.returncode == 0:
            return 0
        raise UsageError(r.stderr.strip() or f"cannot unmount {target}")
    raise UsageError(f"{target} is not a blockbridge mount")


def cmd_status(args: argparse.Namespace) -> int:
    recs = records()
    if args.mountpoint is not None:
        mnt = os.path.abspath(args.mountpoint)
        recs = [rec for rec in recs if rec.get("mountpoint") == mnt]
        if not recs:
            raise UsageError(f"{mnt} is not a running blockbridge mount")
    if not recs:
        print("no blockbridge mounts")
        return 0
    from pathlib import Path

    from .control import request

    for rec in recs:
        # live counters from the mount process; the record file may be 2 s old
        with contextlib.suppress(OSError, KeyError, ValueError):
            rec = request(Path(rec["control"]), {"op": "status"}, timeout=5)["status"]
        print(f"{rec['mountpoint']}  (portal {rec['portal']}, pid {rec['pid']})")
        if rec.get("log"):
            print(f"  log {rec['log']}")
        for s in rec.get("sessions", []):
            since = time.strftime("%H:%M:%S", time.localtime(s.get("since", 0)))
            extra = f" since {since}" if s["state"] != "connected" else ""
            again = f", {s['reconnects']} reconnect(s)" if s.get("reconnects") else ""
            print(f"  session {s['target']}: {s['state']}{extra}{again}")
        queue = rec.get("fuse_queue")
        if queue and queue.get("engine") == "blockbridge":
            print(f"  FUSE engine blockbridge: protocol {queue['protocol']}, max_write "
                  f"{queue['max_write']}")
        if queue and queue.get("reason"):
            print(f"  FUSE max_background not raised: {queue['reason']}")
        elif queue:
            print(f"  FUSE max_background {queue['max_background']}")
        for lun in rec.get("luns", []):
            print(f"  {lun['path']}: {lun['size']} bytes{' read-only' if lun['read_only'] else ''}"
                  f"  reads {lun['reads']} ({lun['bytes_read']} B)"
                  f"  writes {lun['writes']} ({lun['bytes_written']} B)"
                  f"  flushes {lun['flushes']}  errors {lun['errors']}")
    return 0


def cmd_discard(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .control import request

    path = os.path.abspath(args.file)
    for rec in records():
        mnt = rec["mountpoint"].rstrip("/") + "/"
        if path.startswith(mnt) and "control" in rec:
            req = {"op": "discard", "path": path[len(mnt):], "offset": args.offset}
            if args.length is not None:
                req["length"] = args.length
            answer = request(Path(rec["control"]), req)
            if not answer.get("ok"):
                raise UsageError(f"discard failed: {answer.get('error')}")
            return 0
    raise UsageError(f"{args.file} is not a LUN file of a running blockbridge mount")


def cmd_rescan(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .control import request

    mnt = os.path.abspath(args.mountpoint)
    for rec in records():
        if rec.get("mountpoint") == mnt and "control" in rec:
            answer = request(Path(rec["control"]), {"op": "rescan"})
            if not answer.get("ok"):
                raise UsageError(f"rescan of {mnt} failed: {answer.get('error')}")
            for line in answer.get("changes") or ["no change"]:
                print(line)
            return 0
    raise UsageError(f"{mnt} is not a running blockbridge mount")


def cmd_cp(args: argparse.Namespace) -> int:
    from .copy import run

    return run(args.image, args.dest, quiet=args.quiet)


COMMANDS = {"cp": cmd_cp, "discover": cmd_discover, "discard": cmd_discard, "mount": cmd_mount,
            "umount": cmd_umount, "rescan": cmd_rescan, "status": cmd_status}


def _stdout_closed() -> bool:
    """Whether our standard output is a pipe whose reader has gone (POLLERR)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    level = logging.ERROR if args.quiet else logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code = COMMANDS[args.command](args)
        # Flush here, not at exit: a reader gone away is then the BrokenPipeError below,
        # not Python's "Exception ignored" message and exit status 120.
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `blockbridge status | head`: the reader of our output went away, not an error
        # to report.  (SIGPIPE stays ignored: a peer closing a socket is an error.)
        if _stdout_closed():
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        raise
    except BaseException as exc:
        shown = user_error(exc)
        if shown is None:
            raise
        print(f"blockbridge: {shown}", file=sys.stderr)
        return 1
