"""TLS for iSCSI connections: contexts, certificate pinning, and a self-signed key pair helper.

Shared by both sides (it only uses ``ssl`` and ``cryptography``).  An initiator verifies the
target against a CA file or the system store, or pins the SHA-256 fingerprint of its
certificate; a fingerprint learnt on first use is kept in a known-hosts file, as ssh does.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from .files import write_file


class TLSError(Exception):
    """A TLS setup or verification problem, worded for the user."""


def fingerprint(der: bytes) -> str:
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def normalise_fingerprint(text: str) -> str:
    raw = text.strip().removeprefix("SHA256:").removeprefix("sha256:").replace(":", "").lower()
    if len(raw) != 64 or any(c not in "0123456789abcdef" for c in raw):
        raise TLSError(f"invalid fingerprint {text!r}: expected SHA256:<64 hex digits>")
    return "SHA256:" + raw


@dataclass(frozen=True)
class ClientTLS:
    ca_file: str | None = None
    pinned: str | None = None  # "SHA256:<hex>"
    known_hosts: Path | None = None
    accept_new: bool = False
    cert_file: str | None = None  # client certificate, when the target asks for one
    key_file: str | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.pinned or (self.known_hosts is not None and not self.ca_file):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # verified by fingerprint after the handshake
        if self.cert_file:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise TLSError(f"cannot load the client certificate: {exc}") from None
        return ctx

    def check_peer(self, portal: str, der: bytes | None) -> None:
        if der is None:
            raise TLSError(f"{portal} presented no certificate")
        got = fingerprint(der)
        if self.pinned:
            if got != self.pinned:
                raise TLSError(f"certificate of {portal} does not match the pinned fingerprint "
                               f"(expected {self.pinned}, got {got})")
            return
        if self.known_hosts is None or self.ca_file:
            return
        known = read_known_hosts(self.known_hosts)
        if portal in known:
            if known[portal] != got:
                raise TLSError(f"certificate of {portal} changed: expected {known[portal]}, got "
                               f"{got}; if the change is expected, delete its line from "
                               f"{self.known_hosts}")
            return
        if not self.accept_new:
            raise TLSError(f"{portal} is not a known host; its certificate is {got}. Verify "
                           "it, then pass --tls-fingerprint or --tls-accept-new")
        add_known_host(self.known_hosts, portal, got)


def read_known_hosts(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and not line.startswith("#"):
                out[parts[0]] = parts[1]
    except FileNotFoundError:
        pass
    return out


def add_known_host(path: Path, portal: str, fp: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        old = path.read_bytes()
    except FileNotFoundError:
        old = b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    write_file(path, old + f"{portal} {fp}\n".encode(), 0o600)


def server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
        if client_ca:
            ctx.load_verify_locations(client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(f"cannot load the TLS certificate or key: {exc}") from None
    return ctx


def generate_self_signed(directory: Path, name: str | None = None) -> tuple[Path, Path, str]:
    """Write <dir>/blockbridge.crt (0644) and <dir>/blockbridge.key (0600), each a new
    file renamed into place (see :func:`files.write_file`: a link planted there is
    replaced, not followed); return them and the certificate's fingerprint."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    host = name or socket.gethostname()
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    alt = [x509.DNSName(host), x509.DNSName("localhost"),
           x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
           x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    crt_path, key_path = directory / "blockbridge.crt", directory / "blockbridge.key"
    write_file(key_path, key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()), 0o600)
    write_file(crt_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return crt_path, key_path, fingerprint(cert.public_bytes(serialization.Encoding.DER))
