"""ietd.conf, the IET configuration format, read strictly but compatibly.

Everything IET accepted is accepted; keys IET ignored silently produce a warning with
file and line; real mistakes raise :class:`ConfigError` so the daemon never starts
half-configured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockbridge.iscsi.chap import MIN_SECRET_LENGTH, weak_secret

from .backends.registry import backend_types

TARGET_NAME = re.compile(r"^(iqn\.\S+|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]+)$")
RFC_IQN = re.compile(r"^iqn\.\d{4}-\d{2}\.")
MAX_NAME_BYTES = 223  # RFC 7143's limit for iSCSI names; VPD 0x83 holds them with room to spare

# key -> (RFC spelling, kind, low, high); kind "num", "bool" or "digest"
ISCSI_KEYS: dict[str, tuple[str, str, int, int]] = {
    k.lower(): (k, kind, lo, hi)
    for k, kind, lo, hi in (
        ("MaxConnections", "num", 1, 65535),
        ("InitialR2T", "bool", 0, 0),
        ("ImmediateData", "bool", 0, 0),
        ("MaxRecvDataSegmentLength", "num", 512, 16777215),
        ("MaxXmitDataSegmentLength", "num", 512, 16777215),
        ("MaxBurstLength", "num", 512, 16777215),
        ("FirstBurstLength", "num", 512, 16777215),
        ("DefaultTime2Wait", "num", 0, 3600),
        ("DefaultTime2Retain", "num", 0, 3600),
        ("MaxOutstandingR2T", "num", 1, 65535),
        ("DataPDUInOrder", "bool", 0, 0),
        ("DataSequenceInOrder", "bool", 0, 0),
        ("ErrorRecoveryLevel", "num", 0, 2),
        ("HeaderDigest", "digest", 0, 0),
        ("DataDigest", "digest", 0, 0),
    )
}
# Lun keys of every Type (the backend's own keys are in its registry entry)
_COMMON_LUN_KEYS = {"type": "Type", "iomode": "IOMode", "scsiid": "ScsiId", "scsisn": "ScsiSN",
                    "blocksize": "BlockSize"}
IGNORED_KEYS = {"ofmarker", "ifmarker", "ofmarkint", "ifmarkint", "wthreads"}
GLOBAL_IGNORED = {"isnsserver", "isnsaccesscontrol"}


class ConfigError(Exception):
    def __init__(self, filename: str, line: int, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.filename, self.line, self.message, self.hint = filename, line, message, hint

    def __str__(self) -> str:
        hint = f" ({self.hint})" if self.hint else ""
        return f"{self.filename}:{self.line}: {self.message}{hint}"


@dataclass(frozen=True)
class ConfigWarning:
    filename: str
    line: int
    message: str
    why: str = ""  # shown after the message
    weak_secret: bool = False  # --refuse-weak-secrets makes this warning an error

    def __str__(self) -> str:
        why = f"; {self.why}" if self.why else ""
        return f"{self.filename}:{self.line}: {self.message}{why}"


@dataclass(frozen=True)
class LunConfig:
    number: int
    path: str | None
    type: str = "fileio"
    iomode: str = "wt"
    scsi_id: str | None = None
    scsi_sn: str | None = None
    block_size: int = 512
    blocks: int | None = None
    line: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # the backend's keys, checked


@dataclass
class TargetConfig:
    name: str
    line: int = 0
    alias: str | None = None
    luns: list[LunConfig] = field(default_factory=list)
    incoming_users: list[tuple[str, str]] = field(default_factory=list)
    outgoing_user: tuple[str, str] | None = None
    params: dict[str, str] = field(default_factory=dict)
    max_sessions: int = 0
    nop_interval: int = 0
    nop_timeout: int = 0
    queued_commands: int = 32


@dataclass
class Config:
    incoming_users: list[tuple[str, str]] = field(default_factory=list)
    outgoing_user: tuple[str, str] | None = None
    targets: list[TargetConfig] = field(default_factory=list)
    warnings: list[ConfigWarning] = field(default_factory=list)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Join backslash continuations; number lines from 1; drop comments and blanks."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            out.append((start, stripped))
    if pending.strip():
        out.append((start, pending.strip()))
    return out


def _split_lun_params(text: str, filename: str, line: int) -> dict[str, tuple[str, str]]:
    params: dict[str, tuple[str, str]] = {}
    for item in re.findall(r'(?:[^,"]|"[^"]*")+', text):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(filename, line, f"Lun parameter {item.strip()!r} has no value",
                              "write KEY=VALUE, e.g. Path=/srv/disk.img")
        params[key.strip().lower()] = (key.strip(), value.strip().strip('"'))
    return params


def _number(value: str, key: str, filename: str, line: int, lo: int, hi: int) -> int:
    if not value.isdigit():
        raise ConfigError(filename, line, f"{key} needs a number, got {value!r}")
    n = int(value)
    if not lo <= n <= hi:
        raise ConfigError(filename, line, f"{key} {n} is outside {lo}..{hi}")
    return n


def parse_lun(args: list[str], filename: str, line: int) -> LunConfig:
    """A Lun line's words after ``Lun``: its number, then its KEY=VALUE parameters."""
    if not args:
        raise ConfigError(filename, line, "Lun needs a number and parameters",
                          "e.g. Lun 0 Path=/srv/disk.img,Type=fileio")
    number = _number(args[0], "Lun", filename, line, 0, 16383)
    if len(args) < 2:
        raise ConfigError(filename, line, f"Lun {number} has no parameters",
                          "e.g. Lun 0 Path=/srv/disk.img,Type=fileio")
    params = _split_lun_params(" ".join(args[1:]), filename, line)
    lun_type = params.get("type", ("", "fileio"))[1].lower()
    types = backend_types()
    kind = types.get(lun_type)
    if kind is None:
        raise ConfigError(filename, line, f"Lun {number}: unknown Type {lun_type!r}",
                          "use " + ", ".join(sorted(types)))
    options: dict[str, Any] = {}
    for key, (orig, value) in params.items():
        if key in _COMMON_LUN_KEYS:
            continue
        spec = kind.key(key)
        if spec is None:
            known = [*_COMMON_LUN_KEYS.values(), *(k.name for k in kind.keys)]
            raise ConfigError(filename, line, f"unknown Lun parameter {orig!r} for "
                              f"Type={lun_type}", "known: " + ", ".join(known))
        try:
            options[key] = spec.parse(value)
        except ValueError as exc:
            raise ConfigError(filename, line, f"Lun {number}: {spec.name} {exc}") from None
    for spec in kind.keys:
        if spec.required and spec.name.lower() not in options:
            raise ConfigError(filename, line, f"Lun {number} has no {spec.name}",
                              f"add {spec.name}=... ({spec.meaning})")
    iomode = params.get("iomode", ("", "wt"))[1].lower()
    if iomode not in ("wt", "wb", "ro"):
        raise ConfigError(filename, line, f"Lun {number}: unknown IOMode {iomode!r}",
                          "use wt, wb or ro")
    path = options.get("path")
    block_size = 512
    if "blocksize" in params:
        block_size = _number(params["blocksize"][1], "BlockSize", filename, line, 512, 4096)
        if block_size not in (512, 1024, 2048, 4096):
            raise ConfigError(filename, line, f"BlockSize {block_size} is not supported",
                              "use 512, 1024, 2048 or 4096")
    blocks = options.get("blocks") or options.get("sectors")
    ids = {}
    for key, label in (("scsiid", "ScsiId"), ("scsisn", "ScsiSN")):
        if key in params:
            value = params[key][1]
            if len(value) > 16:
                raise ConfigError(filename, line, f"{label} is longer than 16 characters")
            if not all(" " <= ch <= "~" for ch in value):
                raise ConfigError(filename, line, f"{label} {value!r} is not printable ASCII",
                                  "use ASCII letters, digits, punctuation or spaces")
            ids[key] = value
    return LunConfig(number, path, lun_type, iomode, ids.get("scsiid"), ids.get("scsisn"),
                     block_size, blocks, line, options)


def parse_config(text: str, filename: str = "<config>") -> Config:
    cfg = Config()
    target: TargetConfig | None = None
    warn = cfg.warnings.append
    # every account's secret, with where it is: a secret must not serve both directions
    secrets: dict[str, list[tuple[str, str, int]]] = {"incominguser": [], "outgoinguser": []}
    for line, content in _logical_lines(text):
        keyword, *args = content.split()
        key = keyword.lower()
        if key == "target":
            if len(args) != 1:
                raise ConfigError(filename, line, "Target needs exactly one name",
                                  "e.g. Target iqn.2026-11.com.example:disk1")
            name = args[0]
            if not TARGET_NAME.match(name):
                raise ConfigError(filename, line, f"invalid target name {name!r}",
                                  "names start with iqn.YYYY-MM., eui. or naa.")
            if len(name.encode()) > MAX_NAME_BYTES:
                raise ConfigError(filename, line,
                                  f"target name is longer than {MAX_NAME_BYTES} bytes")
            if name.startswith("iqn.") and not RFC_IQN.match(name):
                warn(ConfigWarning(filename, line, f"{name} is not an RFC 3720 iqn name "
                                   "(iqn.YYYY-MM.reversed.domain[:id]); accepted as IET did"))
            if any(t.name == name for t in cfg.targets):
                raise ConfigError(filename, line, f"target {name} is defined twice")
            target = TargetConfig(name=name, line=line)
            cfg.targets.append(target)
            continue
        if key in ("incominguser", "outgoinguser"):
            if len(args) != 2:
                raise ConfigError(filename, line, f"{keyword} needs a user name and a secret",
                                  f"e.g. {keyword} alice secret-of-12+-chars")
            account = (args[0], args[1])
            secrets[key].append((args[0], args[1], line))
            if weak_secret(args[1].encode()):
                warn(ConfigWarning(filename, line, f"the CHAP secret of {args[0]} is shorter "
                                   f"than {MIN_SECRET_LENGTH} characters",
                                   f"RFC 7143 asks for at least {MIN_SECRET_LENGTH}",
                                   weak_secret=True))
            if key == "incominguser":
                (target.incoming_users if target else cfg.incoming_users).append(account)
            else:
                holder = target if target else cfg
                if holder.outgoing_user is not None:
                    warn(ConfigWarning(filename, line, "a second OutgoingUser replaces the "
                                       "first; only one is used"))
                holder.outgoing_user = account
            continue
        if target is None:
            if key in GLOBAL_IGNORED:
                warn(ConfigWarning(filename, line, f"{keyword} (iSNS) is not supported; "
                                   "ignored"))
            elif key == "lun":
                raise ConfigError(filename, line, "Lun outside a Target section",
                                  "put it after a 'Target iqn...' line")
            else:
                warn(ConfigWarning(filename, line, f"{keyword} in the global section is "
                                   "ignored (only IncomingUser and OutgoingUser belong there)"))
            continue
        if key == "lun":
            lun = parse_lun(args, filename, line)
            if any(x.number == lun.number for x in target.luns):
                raise ConfigError(filename, line, f"Lun {lun.number} of {target.name} is "
                                  "defined twice")
            target.luns.append(lun)
        elif key == "alias":
            target.alias = " ".join(args) or None
        elif key in ("maxsessions", "nopinterval", "noptimeout", "queuedcommands"):
            if len(args) != 1:
                raise ConfigError(filename, line, f"{keyword} needs one value")
            limits = {"maxsessions": (0, 65535), "nopinterval": (0, 90),
                      "noptimeout": (0, 90), "queuedcommands": (1, 256)}[key]
            setattr(target, {"maxsessions": "max_sessions", "nopinterval": "nop_interval",
                             "noptimeout": "nop_timeout",
                             "queuedcommands": "queued_commands"}[key],
                    _number(args[0], keyword, filename, line, *limits))
        elif key in ISCSI_KEYS:
            rfc, kind, lo, hi = ISCSI_KEYS[key]
            if len(args) != 1:
                raise ConfigError(filename, line, f"{keyword} needs one value")
            value = args[0]
            if kind == "num":
                _number(value, rfc, filename, line, lo, hi)
            elif kind == "bool":
                if value.lower() not in ("yes", "no"):
                    raise ConfigError(filename, line, f"{rfc} must be Yes or No")
                if value not in ("Yes", "No"):
                    warn(ConfigWarning(filename, line, f"{rfc} {value}: IET only accepted "
                                       "'Yes' or 'No' exactly"))
                value = value.capitalize()
            else:
                items = [v.strip() for v in value.split(",")]
                norm = {"none": "None", "crc32c": "CRC32C"}
                if not items or any(v.lower() not in norm for v in items):
                    raise ConfigError(filename, line, f"{rfc} must be None, CRC32C or a list "
                                      "of both")
                value = ",".join(norm[v.lower()] for v in items)
            if rfc == "MaxConnections" and value != "1":
                warn(ConfigWarning(filename, line, "MaxConnections > 1 (MC/S) is not "
                                   "supported; using 1"))
                value = "1"
            if rfc == "ErrorRecoveryLevel" and value != "0":
                warn(ConfigWarning(filename, line, "only ErrorRecoveryLevel 0 is supported; "
                                   "using 0"))
                value = "0"
            if rfc in ("DataPDUInOrder", "DataSequenceInOrder") and value == "No":
                warn(ConfigWarning(filename, line, f"{rfc} No is not supported; using Yes"))
                value = "Yes"
            target.params[rfc] = value
        elif key in IGNORED_KEYS:
            warn(ConfigWarning(filename, line, f"{keyword} is obsolete or not needed; ignored"))
        else:
            warn(ConfigWarning(filename, line, f"unknown keyword {keyword!r} ignored"))
    _check_secret_directions(secrets, filename)
    for t in cfg.targets:
        if t.luns and min(x.number for x in t.luns) != 0:
            warn(ConfigWarning(filename, t.line, f"target {t.name} has no Lun 0; some "
                               "initiators only scan from LUN 0"))
    return cfg


def _check_secret_directions(secrets: dict[str, list[tuple[str, str, int]]],
                             filename: str) -> None:
    """RFC 7143 §12.1.3: a CHAP secret is not used in both directions. An OutgoingUser
    secret that is also an IncomingUser secret, of any target or of discovery, lets one
    account's holder log in as the other: the target answers the challenge it gets, and
    that answer is what the other account must send."""
    incoming: dict[str, tuple[str, int]] = {}
    for user, secret, line in secrets["incominguser"]:
        incoming.setdefault(secret, (user, line))
    for user, secret, line in secrets["outgoinguser"]:
        if secret in incoming:
            other, other_line = incoming[secret]
            raise ConfigError(
                filename, max(line, other_line), f"the secret of OutgoingUser {user} (line "
                f"{line}) is also the secret of IncomingUser {other} (line {other_line})",
                "RFC 7143 forbids a secret in both directions: give each its own")


def load_config(path: Path | str) -> Config:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(str(p), 0, "configuration file not found",
                          "give -c FILE or serve a disk with --disk") from None
    except PermissionError:
        raise ConfigError(str(p), 0, "permission denied reading the configuration") from None
    except UnicodeDecodeError:
        raise ConfigError(str(p), 0, "the configuration is not a text file") from None
    return parse_config(text, str(p))


def default_config_path() -> Path | None:
    for candidate in ("/etc/iet/ietd.conf", "/etc/ietd.conf"):
        if Path(candidate).exists():
            return Path(candidate)
    return None
