"""`blockbridge mount`: log in to every target of a portal and serve its LUNs over FUSE."""

from __future__ import annotations

import logging
import os
import signal
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from .control import serve_control
from .credentials import Credentials, lookup
from .fuse.engines import DEFAULT, MountFailed, open_engine
from .fuse.lunfs import LunFS
from .initiator.blockdev import BlockDevice, list_disk_luns
from .initiator.errors import InitiatorError
from .initiator.live import DEFAULT_IDLE_CHECK, LiveLuns
from .initiator.recovery import DEFAULT_REPLACEMENT_TIMEOUT, RecoveringSession
from .initiator.session import Session
from .iscsi import chap
from .state import record_path, remove_record, runtime_dir, write_record
from .tls import ClientTLS

log = logging.getLogger(__name__)


class MountError(Exception):
    """A failure before the mount is ready: one line for the user."""


@dataclass
class MountRequest:
    host: str
    port: int
    mountpoint: str
    initiator_name: str
    targets: list[str] = field(default_factory=list)
    read_only: bool = False
    allow_other: bool = False
    fuse_options: list[str] = field(default_factory=list)
    credentials: dict[str, Credentials] = field(default_factory=dict)
    tls: ClientTLS | None = None
    replacement_timeout: float = DEFAULT_REPLACEMENT_TIMEOUT
    nop_interval: float = 5.0
    idle_check: float = DEFAULT_IDLE_CHECK
    log_file: str | None = None
    chap_algorithms: tuple[int, ...] = chap.DEFAULT_PREFERENCE
    fuse_engine: str = DEFAULT


def read_size_option(tree: dict[str, dict[int, BlockDevice]], options: list[str]) -> list[str]:
    """``max_read=`` the largest read that every LUN serves with one READ (targets
    limit it, tgtd and LIO to 256 KiB by default): the kernel then sends reads no larger,
    and each is one command, started without a task and followed by the mount's
    readahead.  Nothing if the user chose a size, or there is no LUN."""
    if any(o.startswith("max_read=") for o in options):
        return []
    sizes = [dev.max_io for luns in tree.values() for dev in luns.values()]
    return [f"max_read={max(min(sizes), 4096)}"] if sizes else []


def check_mountpoint(path: str, engine: str = DEFAULT) -> None:
    if not os.path.exists(path):
        raise MountError(f"mount point {path} does not exist (create it with mkdir -p {path})")
    if not os.path.isdir(path):
        raise MountError(f"mount point {path} is not a directory")
    if os.path.ismount(path):
        raise MountError(f"{path} is already a mount point (unmount it first with "
                         f"blockbridge umount {path})")
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: install fuse3 and load the fuse module")
    if engine == "pyfuse3" and not os.access("/dev/fuse", os.R_OK | os.W_OK):
        # libfuse opens it before falling back to fusermount3, and gives up if it cannot
        # (our engine leaves opening it to fusermount3, or to root's mount(2))
        mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
        raise MountError(f"/dev/fuse is not open to you (mode {mode:04o}): ask your "
                         "administrator to run chmod 666 /dev/fuse (udev does it on most "
                         "systems)")


async def discover(host: str, port: int, initiator_name: str,
                   credentials: dict[str, Credentials] | None = None,
                   tls: ClientTLS | None = None,
                   chap_algorithms: tuple[int, ...] = chap.DEFAULT_PREFERENCE
                   ) -> list[tuple[str, list[str]]]:
    """SendTargets=All: [(target name, [addresses])]."""
    creds = lookup(credentials or {}, None)
    s = await Session.connect(host, port, initiator_name=initiator_name, target_name=None,
                              credentials=creds.chap, target_credentials=creds.target, tls=tls,
                              chap_algorithms=chap_algorithms)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(s.run)
        pairs = await s.text([("SendTargets", "All")])
        await s.logout()
        nursery.cancel_scope.cancel()
    found: list[tuple[str, list[str]]] = []
    for key, value in pairs:
        if key == "TargetName":
            found.append((value, []))
        elif key == "TargetAddress" and found:
            found[-1][1].append(value)
    return found


async def serve(req: MountRequest, ready: Callable[[], None]) -> None:
    check_mountpoint(req.mountpoint, req.fuse_engine)
    runtime_dir()  # checked before anything is mounted (RuntimeDirError names the fix)
    try:
        offered = [name for name, _ in await discover(req.host, req.port, req.initiator_name,
                                                      req.credentials, req.tls,
                                                      req.chap_algorithms)]
    except (InitiatorError, Exception) as exc:
        raise MountError(str(exc)) from None
    wanted = req.targets or offered
    for name in wanted:
        if name not in offered:
            raise MountError(f"target {name} is not offered by {req.host}:{req.port} "
                             f"(offered: {', '.join(offered) or 'none'})")
    if not wanted:
        raise MountError(f"{req.host}:{req.port} offers no targets to {req.initiator_name}")
    async with trio.open_nursery() as nursery:
        sessions: list[RecoveringSession] = []
        tree: dict[str, dict[int, BlockDevice]] = {}
        live: list[LiveLuns] = []
        try:
            for name in wanted:
                creds = lookup(req.credentials, name)
                isid = bytes([0x80]) + os.urandom(3) + b"\0\0"  # kept across reconnects

                async def connect(name: str = name, creds: Credentials = creds,
                                  isid: bytes = isid) -> Session:
                    return await Session.connect(
                        req.host, req.port, initiator_name=req.initiator_name,
                        target_name=name, credentials=creds.chap,
                        target_credentials=creds.target, tls=req.tls, isid=isid,
                        chap_algorithms=req.chap_algorithms)

                s = RecoveringSession(connect, nursery,
                                      replacement_timeout=req.replacement_timeout,
                                      nop_interval=req.nop_interval,
                                      nop_timeout=req.nop_interval)
                await s.start()
                sessions.append(s)
                tree[name] = {}
                for info in await list_disk_luns(s):
                    if info.device_type == 0:
                        tree[name][info.number] = await BlockDevice.open(s, info.number)
                live.append(LiveLuns(name, s, tree[name], idle_check=req.idle_check))
                s.on_reconnect = live[-1].request_all
        except Exception as exc:
            for s in sessions:
                await s.logout()
            nursery.cancel_scope.cancel()
            raise MountError(str(exc)) from None
        fs = LunFS(tree, read_only=req.read_only)
        options = ["default_permissions"]
        if req.read_only:
            options.append("ro")
        if req.allow_other:
            options.append("allow_other")
        options += [o for o in req.fuse_options if o not in options]
        if req.fuse_engine == DEFAULT:  # libfuse keeps a max_read of its own
            options += read_size_option(tree, options)
        engine = open_engine(req.fuse_engine, fs)
        try:
            await engine.mount(req.mountpoint, options,
                               fsname=f"blockbridge:{req.host}:{req.port}")
        except MountFailed as exc:
            for s in sessions:
                await s.logout()
            nursery.cancel_scope.cancel()
            hint = ""
            if req.allow_other and "user_allow_other" not in str(exc):
                hint = " (allow_other needs 'user_allow_other' in /etc/fuse.conf)"
            raise MountError(f"cannot mount on {req.mountpoint}: {exc}{hint}") from None
        pid = os.getpid()

        control = record_path(pid).with_suffix(".sock")

        def snapshot() -> dict[str, object]:
            queue = engine.status()
            return {
                "pid": pid, "mountpoint": os.path.abspath(req.mountpoint),
                "portal": f"{req.host}:{req.port}", "control": str(control),
                "log": req.log_file, "engine": engine.name,
                "sessions": [{"target": s.target_name, "state": s.state,
                              "since": s.since, "reconnects": s.reconnects}
                             for s in sessions],
                "luns": [{"path": path, "size": dev.size, "read_only": dev.read_only,
                          **vars(dev.counters)} for path, dev in fs.devices()],
                **({"fuse_queue": queue} if queue is not None else {}),
            }

        def record() -> None:
            write_record(pid, snapshot())

        async def keep_record() -> None:
            while True:
                record()
                await trio.sleep(2)

        async def on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
                async for _ in sigs:
                    log.info("unmounting %s", req.mountpoint)
                    engine.stop()
                    return

        async def rescan() -> list[str]:
            return [line for luns in live for line in await luns.rescan()]

        try:
            try:
                for luns in live:
                    luns.listener = fs
                    await nursery.start(luns.run)
                await nursery.start(serve_control, control, fs.devices, snapshot, rescan)
                record()
            except Exception as exc:
                # FUSE is mounted already: the cleanup below leaves no dead mount point
                # and no session behind
                raise MountError(f"cannot serve {req.mountpoint}: {exc}") from None
            nursery.start_soon(keep_record)
            nursery.start_soon(on_signal)
            ready()
            log.info("mounted %d LUN(s) of %s:%d on %s (FUSE engine %s)", len(fs.devices()),
                     req.host, req.port, req.mountpoint, engine.name)
            await engine.serve(record)
        finally:
            with trio.CancelScope(shield=True):
                for path, dev in fs.devices():
                    if dev.read_only:
                        continue
                    try:
                        with trio.move_on_after(30):
                            await dev.flush()
                    except InitiatorError as exc:
                        log.error("flushing %s failed: %s", path, exc)
                for s in sessions:
                    await s.logout()
                await engine.close()
                remove_record(pid)
            nursery.cancel_scope.cancel()
