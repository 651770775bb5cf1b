"""CHAP credentials for the initiator: from a private TOML file, never the command line.

The file (default ``~/.config/blockbridge/credentials.toml``) must not be readable by
group or others.  Sections are target names; ``[discovery]`` is used for SendTargets
sessions and ``[default]`` for any target without its own section::

    [default]
    user = "alice"
    secret = "a-secret-of-12+"
    # mutual CHAP: what the target must answer with
    target_user = "filer"
    target_secret = "another-secret"
"""

from __future__ import annotations

import logging
import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .iscsi.chap import MIN_SECRET_LENGTH, weak_secret
from .iscsi.login import ChapCredentials
from .state import config_dir

log = logging.getLogger(__name__)


class CredentialsError(Exception):
    pass


@dataclass(frozen=True)
class Credentials:
    chap: ChapCredentials | None = None
    target: ChapCredentials | None = None


def default_path() -> Path:
    return config_dir() / "credentials.toml"


def _pair(values: dict[str, object], origin: str, section: str, user_key: str,
          secret_key: str) -> ChapCredentials | None:
    user, secret = values.get(user_key), values.get(secret_key)
    if user is None and secret is None:
        return None
    if not isinstance(user, str) or not isinstance(secret, str) or not secret:
        raise CredentialsError(f"{origin}: [{section}] needs both {user_key} and {secret_key}")
    if weak_secret(secret.encode()):
        log.warning("%s: [%s] %s is shorter than %d characters; RFC 7143 recommends %d or "
                    "more (or TLS)", origin, section, secret_key, MIN_SECRET_LENGTH,
                    MIN_SECRET_LENGTH)
    return ChapCredentials(user, secret.encode())


def parse(text: str, origin: str) -> dict[str, Credentials]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CredentialsError(f"{origin}: {exc}") from None
    out: dict[str, Credentials] = {}
    for section, values in data.items():
        if not isinstance(values, dict):
            raise CredentialsError(f"{origin}: [{section}] must be a table")
        out[section] = Credentials(_pair(values, origin, section, "user", "secret"),
                                   _pair(values, origin, section, "target_user",
                                         "target_secret"))
    return out


def load(path: Path) -> dict[str, Credentials]:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CredentialsError(f"credentials file {path} does not exist") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialsError(f"{path} is readable by other users; run: chmod 600 {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"cannot read {path}: {exc}") from None
    return parse(text, str(path))


def lookup(table: dict[str, Credentials], target: str | None) -> Credentials:
    """Credentials for a target, or for discovery (target None).  Discovery uses its own
    [discovery] section; otherwise [default]'s account is offered one-way, since most
    targets do not authenticate discovery at all."""
    if target is None:
        if "discovery" in table:
            return table["discovery"]
        return Credentials(table["default"].chap) if "default" in table else Credentials()
    return table.get(target) or table.get("default") or Credentials()


def from_options(auth_file: str | None, auth_env: str | None) -> dict[str, Credentials]:
    """Credentials named on the command line (a file, or an environment variable holding
    TOML text), else the default file if it exists, else none."""
    if auth_env:
        text = os.environ.get(auth_env)
        if text is None:
            raise CredentialsError(f"environment variable {auth_env} is not set")
        return parse(text, f"${auth_env}")
    if auth_file:
        return load(Path(auth_file))
    path = default_path()
    return load(path) if path.exists() else {}
