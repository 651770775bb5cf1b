"""Build the runtime targets from an ietd.conf configuration."""

from __future__ import annotations

import logging
from pathlib import Path

from blockbridge.iscsi.chap import MIN_SECRET_LENGTH
from blockbridge.iscsi.login import ChapCredentials

from .backends.base import Backend, BackingStoreError
from .backends.registry import Opening, backend_types
from .budget import BufferLimits
from .config import Config, ConfigError, LunConfig, default_config_path, load_config
from .lun import LogicalUnit
from .server import AccessPolicy, Limits, TargetServer
from .targets import TargetDef

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The configuration is valid but cannot be served (missing files...)."""


def open_backend(lun: LunConfig, where: str) -> Backend:
    """The backend of a checked Lun line; StartupError (naming ``where``, e.g.
    ``file:line``) if it cannot be opened or does not fit the LUN's block size."""
    kind = backend_types()[lun.type]
    try:
        backend = kind.open(Opening(lun.options, lun.iomode == "ro", lun.block_size))
    except BackingStoreError as exc:
        raise StartupError(f"{where}: Lun {lun.number}: {exc}") from None
    if lun.block_size % backend.block_size or backend.size < lun.block_size:
        backend.close()
        raise StartupError(
            f"{where}: Lun {lun.number}: {backend.description} cannot serve BlockSize "
            f"{lun.block_size} (its own block size is {backend.block_size}, its size "
            f"{backend.size} bytes)")
    return backend


def build_targets(cfg: Config, filename: str) -> list[TargetDef]:
    targets = []
    for t in cfg.targets:
        luns: dict[int, LogicalUnit] = {}
        for lun in t.luns:
            backend = open_backend(lun, f"{filename}:{lun.line}")
            luns[lun.number] = LogicalUnit(
                lun.number, backend, target_name=t.name, block_size=lun.block_size,
                read_only=lun.iomode == "ro", write_cache=lun.iomode == "wb",
                serial=lun.scsi_sn, scsi_id=lun.scsi_id)
        targets.append(TargetDef(
            name=t.name, luns=luns, alias=t.alias,
            incoming={u: s.encode() for u, s in t.incoming_users},
            outgoing=ChapCredentials(t.outgoing_user[0], t.outgoing_user[1].encode())
            if t.outgoing_user else None,
            operational=dict(t.params), queued_commands=t.queued_commands,
            max_sessions=t.max_sessions, nop_interval=t.nop_interval,
            nop_timeout=t.nop_timeout))
    return targets


def reload_config(server: TargetServer, path: Path, *, refuse_weak_secrets: bool = False
                  ) -> list[str]:
    """Re-read ietd.conf into a running server (raises on errors; nothing changes then)."""
    fresh = server_from_config(path, server.acl, refuse_weak_secrets=refuse_weak_secrets,
                               limits=server.limits, buffer_limits=server.buffer_limits)
    return server.reload(list(fresh.targets.values()), fresh.discovery_users,
                         fresh.discovery_outgoing)


def server_from_config(path: Path | None, acl: AccessPolicy | None, *,
                       refuse_weak_secrets: bool = False, limits: Limits | None = None,
                       buffer_limits: BufferLimits | None = None) -> TargetServer:
    if path is None:
        path = default_config_path()
        if path is None:
            raise ConfigError("/etc/iet/ietd.conf", 0, "no configuration found",
                              "give -c FILE, or serve one disk with --disk FILE --size 1G")
        if str(path) == "/etc/ietd.conf":
            log.warning("/etc/ietd.conf is a deprecated location; move it to /etc/iet/")
    cfg = load_config(path)
    for w in cfg.warnings:
        if refuse_weak_secrets and w.weak_secret:
            raise ConfigError(w.filename, w.line, w.message,
                              f"use a secret of {MIN_SECRET_LENGTH} or more characters, or "
                              "drop --refuse-weak-secrets")
        log.warning("%s", w)
    if not cfg.targets:
        log.warning("%s defines no targets", path)
    targets = build_targets(cfg, str(path))
    return TargetServer(
        targets, acl=acl, limits=limits, buffer_limits=buffer_limits,
        discovery_users={u: s.encode() for u, s in cfg.incoming_users},
        discovery_outgoing=ChapCredentials(cfg.outgoing_user[0], cfg.outgoing_user[1].encode())
        if cfg.outgoing_user else None)
