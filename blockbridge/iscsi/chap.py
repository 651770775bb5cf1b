"""CHAP (RFC 1994 as used by RFC 7143 §12.1.3), with the IANA-numbered digests 5-8."""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Callable

from .errors import AuthenticationError, NegotiationError
from .text import decode_binary

# CHAP_A values
MD5, SHA1, SHA256, SHA3_256 = 5, 6, 7, 8
ALGORITHMS: dict[int, Callable[[], hashlib._Hash]] = {
    MD5: hashlib.md5,
    SHA1: hashlib.sha1,
    SHA256: hashlib.sha256,
    SHA3_256: hashlib.sha3_256,
}
NAMES = {MD5: "MD5", SHA1: "SHA-1", SHA256: "SHA-256", SHA3_256: "SHA3-256"}
_BY_NAME = {"md5": MD5, "sha1": SHA1, "sha-1": SHA1, "sha256": SHA256, "sha-256": SHA256,
            "sha3-256": SHA3_256, "sha3_256": SHA3_256}
DEFAULT_PREFERENCE = (SHA256, SHA1, MD5)
MIN_SECRET_LENGTH = 12


def digest_size(algorithm: int) -> int:
    return ALGORITHMS[algorithm]().digest_size


def response(algorithm: int, identifier: int, secret: bytes, challenge: bytes) -> bytes:
    h = ALGORITHMS[algorithm]()
    h.update(bytes([identifier]))
    h.update(secret)
    h.update(challenge)
    return h.digest()


def verify(algorithm: int, identifier: int, secret: bytes, challenge: bytes, got: bytes) -> bool:
    return hmac.compare_digest(response(algorithm, identifier, secret, challenge), got)


def choose_algorithm(offer: str, supported: tuple[int, ...] = DEFAULT_PREFERENCE) -> int | None:
    """The first algorithm of the initiator's CHAP_A list that we support."""
    for item in offer.split(","):
        item = item.strip()
        if item.isdigit() and int(item) in supported and int(item) in ALGORITHMS:
            return int(item)
    return None


def parse_digests(text: str) -> tuple[int, ...]:
    """A list of CHAP digests by name or IANA number ("SHA-256,SHA-1" or "7,6"), in order
    of preference; ValueError names what is not one."""
    out: list[int] = []
    for item in text.split(","):
        name = item.strip().lower()
        if not name:
            continue
        alg = int(name) if name.isdigit() else _BY_NAME.get(name)
        if alg not in ALGORITHMS:
            raise ValueError(f"unknown CHAP digest {item.strip()!r} (known: "
                             + ", ".join(NAMES.values()) + ")")
        assert alg is not None
        if alg not in out:
            out.append(alg)
    if not out:
        raise ValueError("no CHAP digest given")
    return tuple(out)


class RecentChallenges:
    """The challenges one side issued lately, to refuse answering any of them.

    RFC 7143 §12.1.3: a CHAP responder must not answer a challenge it sent itself; a
    peer that relays our challenge back, on this or another connection and to this or
    another account, wants our answer to log in with it. The set is bounded (the oldest
    go first) and forgets a challenge after ``lifetime`` seconds; ``clock`` gives the
    time, so nothing here reads one.
    """

    def __init__(self, *, clock: Callable[[], float], lifetime: float = 120.0,
                 max_entries: int = 16384) -> None:
        self._clock = clock
        self.lifetime = lifetime
        self.max_entries = max_entries
        self._issued: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._issued)

    def _expire(self, now: float) -> None:
        issued = self._issued
        while issued:
            challenge, at = next(iter(issued.items()))
            if now - at < self.lifetime and len(issued) <= self.max_entries:
                break
            del issued[challenge]

    def add(self, challenge: bytes) -> None:
        now = self._clock()
        self._issued.pop(challenge, None)
        self._issued[challenge] = now
        self._expire(now)

    def __contains__(self, challenge: object) -> bool:
        self._expire(self._clock())
        return challenge in self._issued


def parse_identifier(value: str) -> int:
    if not value.isdigit() or len(value) > 3 or int(value) > 255:
        raise AuthenticationError(f"malformed CHAP_I {value[:10]!r}")
    return int(value)


def parse_challenge(value: str, algorithm: int) -> bytes:
    try:
        challenge = decode_binary(value)
    except NegotiationError as exc:
        raise AuthenticationError(f"malformed CHAP_C: {exc}") from exc
    if len(challenge) < 1:
        raise AuthenticationError("empty CHAP challenge")
    return challenge


def parse_response(value: str, algorithm: int) -> bytes:
    try:
        got = decode_binary(value, max_length=64)
    except NegotiationError as exc:
        raise AuthenticationError(f"malformed CHAP_R: {exc}") from exc
    if len(got) != digest_size(algorithm):
        raise AuthenticationError("CHAP_R has the wrong length for the algorithm")
    return got


def weak_secret(secret: bytes) -> bool:
    """RFC 7143 §12.1.3: secrets shorter than MIN_SECRET_LENGTH bytes are too easy to guess
    offline.  Every place that reads a secret asks here."""
    return len(secret) < MIN_SECRET_LENGTH
