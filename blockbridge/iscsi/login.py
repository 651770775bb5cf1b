"""The target's side of the login (RFC 7143 §6.3, §11.12-11.13), and what both sides share.

Pure: one request in, one response out; randomness (CHAP challenges) is injected, and
nothing here touches a socket.  The initiator's side is in :mod:`.initiator_login`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from . import chap
from .constants import ISCSI_VERSION, LoginStatus, Stage
from .errors import AuthenticationError, LoginFailed, NegotiationError
from .names import name_problem, printable
from .params import DECLARATIVE, OUR_DEFAULTS, SessionParams, respond
from .pdu import LoginRequest, LoginResponse
from .text import TextAssembler, decode_text, encode_hex, encode_text

SECURITY_KEYS = frozenset({"AuthMethod", "CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R"})


@dataclass(frozen=True)
class ChapCredentials:
    user: str
    secret: bytes

    def __repr__(self) -> str:  # never show the secret
        return f"ChapCredentials(user={self.user!r}, secret=<{len(self.secret)} bytes>)"


@dataclass(frozen=True)
class TargetLoginConfig:
    target_name: str
    incoming: Mapping[str, bytes] = field(default_factory=dict)
    outgoing: ChapCredentials | None = None
    operational: Mapping[str, str] = field(default_factory=dict)
    target_alias: str | None = None


# (session type, target name, initiator name) -> the target's login configuration, or the
# refusal: a status, or a LoginFailed whose message (for the target's log) says why
Resolver = Callable[[str, str, str], "TargetLoginConfig | LoginStatus | LoginFailed"]
# (target name, initiator name, ISID, CHAP user or None) -> why the session may not be
# created or reinstated, or None
SessionCheck = Callable[[str, str, bytes, "str | None"], "LoginFailed | None"]


class ChallengeRegistry(Protocol):
    """Challenges this side issued recently (see :class:`chap.RecentChallenges`)."""

    def add(self, challenge: bytes) -> None: ...

    def __contains__(self, challenge: object) -> bool: ...

_STATUS_TEXT = {
    LoginStatus.INITIATOR_ERROR: "initiator error",
    LoginStatus.AUTHENTICATION_FAILURE: "authentication failed",
    LoginStatus.AUTHORIZATION_FAILURE: "this initiator is not allowed to use the target",
    LoginStatus.NOT_FOUND: "target not found on this portal",
    LoginStatus.MISSING_PARAMETER: "a required login parameter is missing",
    LoginStatus.UNSUPPORTED_VERSION: "unsupported iSCSI version",
    LoginStatus.SESSION_TYPE_NOT_SUPPORTED: "session type not supported",
    LoginStatus.INVALID_DURING_LOGIN: "request not valid during login",
    LoginStatus.TARGET_REMOVED: "target removed",
    LoginStatus.TOO_MANY_CONNECTIONS: "too many connections",
    LoginStatus.SERVICE_UNAVAILABLE: "target service unavailable",
    LoginStatus.OUT_OF_RESOURCES: "target out of resources",
}


def describe_status(status_class: int, detail: int) -> str:
    code = (status_class << 8) | detail
    try:
        text = _STATUS_TEXT.get(LoginStatus(code), LoginStatus(code).name.lower().replace("_", " "))
    except ValueError:
        text = "login refused"
    return f"{text} (status 0x{code:04x})"


class TargetLogin:
    """The target's side of one connection's login."""

    def __init__(
        self,
        *,
        portal_group_tag: int,
        resolve: Resolver,
        random_bytes: Callable[[int], bytes],
        chap_algorithms: tuple[int, ...] = tuple(chap.ALGORITHMS),
        challenges: ChallengeRegistry | None = None,
        check_session: SessionCheck | None = None,
    ) -> None:
        self.portal_group_tag = portal_group_tag
        self._resolve = resolve
        # Shared by every login of the server: our challenges are never answered.
        self._challenges = challenges
        self._check_session = check_session
        self._random = random_bytes
        self._chap_algorithms = chap_algorithms
        self._text = TextAssembler()
        self._first = True
        self._config: TargetLoginConfig | None = None
        self._stage = Stage.SECURITY
        self._auth = "pending"  # pending, none, chap-a, chap-r, done
        self._chap_alg = chap.MD5
        self._chap_id = 0
        self._chap_challenge = b""
        self._agreed: dict[str, str] = {}
        self._peer_mrdsl = 8192
        self._declared_mrdsl = False
        self._seen_keys: set[str] = set()
        self.done = False
        self.failed = False
        self.failure: str | None = None
        self.isid = b""
        self.tsih = 0
        self._req_tsih = 0
        self.cid = 0
        self.initiator_name = ""
        self.initiator_alias: str | None = None
        self.target_name = ""
        self.requested_target = ""  # the TargetName the initiator asked for, unchecked
        self.session_type = "Normal"
        self.auth_user: str | None = None
        self.params = SessionParams()

    @property
    def config(self) -> TargetLoginConfig | None:
        return self._config

    @property
    def needs_tsih(self) -> bool:
        return self.tsih == 0

    @property
    def authenticated(self) -> bool:
        """The security stage is over: the initiator proved who it is, or needs not."""
        return self._auth in ("done", "none")

    def assign_tsih(self, tsih: int) -> None:
        self.tsih = tsih

    def receive(
        self, req: LoginRequest, *, statsn: int, expcmdsn: int, maxcmdsn: int
    ) -> LoginResponse:
        if self.done or self.failed:
            raise LoginFailed("login already finished", LoginStatus.INVALID_DURING_LOGIN)
        base = dict(itt=req.itt, isid=req.isid, statsn=statsn, expcmdsn=expcmdsn,
                    maxcmdsn=maxcmdsn, version_max=ISCSI_VERSION, version_active=ISCSI_VERSION)
        try:
            return self._receive(req, base)
        except (LoginFailed, NegotiationError) as exc:
            status = exc.status
            self.failed = True
            # peer text in it (names, keys) is escaped: one line in the log, whatever it holds
            self.failure = printable(f"{_STATUS_TEXT.get(status, status.name.lower())}: {exc}",
                                     600)
            return LoginResponse(
                csg=req.csg, tsih=self._req_tsih, status_class=status.status_class,
                status_detail=status.detail, **base,  # type: ignore[arg-type]
            )

    def _receive(self, req: LoginRequest, base: dict[str, object]) -> LoginResponse:
        if req.version_min > ISCSI_VERSION:
            raise LoginFailed("unsupported version", LoginStatus.UNSUPPORTED_VERSION)
        if self._first:
            self.isid, self._req_tsih, self.cid = bytes(req.isid), req.tsih, req.cid
            if req.tsih:
                self.tsih = req.tsih
        elif req.isid != self.isid or req.tsih != self._req_tsih or req.cid != self.cid:
            raise LoginFailed("ISID/TSIH/CID changed during login", LoginStatus.INITIATOR_ERROR)
        if req.csg != self._stage:
            if not (self._stage is Stage.SECURITY and req.csg is Stage.OPERATIONAL
                    and self._auth in ("pending", "done", "none") and self._first):
                raise LoginFailed(f"unexpected login stage {req.csg.name}",
                                  LoginStatus.INITIATOR_ERROR)
            self._stage = req.csg
        if req.transit and req.nsg <= req.csg:
            raise LoginFailed("invalid next stage", LoginStatus.INITIATOR_ERROR)
        self._text.add(req.data)
        if req.cont:
            if req.transit:
                raise LoginFailed("C and T bits both set", LoginStatus.INITIATOR_ERROR)
            return LoginResponse(csg=req.csg, tsih=self._req_tsih, **base)  # type: ignore[arg-type]
        pairs = decode_text(self._text.take())
        for key, _ in pairs:
            if key in self._seen_keys and key not in ("CHAP_A",):
                raise NegotiationError(f"key {key} negotiated twice")
            self._seen_keys.add(key)
        answers: list[tuple[str, str]] = []
        if self._first:
            self._start(dict(pairs), answers)
            self._first = False
        if self._stage is Stage.OPERATIONAL and self._auth == "pending":
            assert self._config is not None
            if self._config.incoming:
                raise AuthenticationError("this target requires CHAP; the initiator skipped "
                                          "the security stage")
            self._auth = "none"
        if self._stage is Stage.SECURITY:
            ready = self._security(dict(pairs), answers)
        else:
            for key, _ in pairs:
                if key in SECURITY_KEYS:
                    raise LoginFailed(f"{key} outside the security stage",
                                      LoginStatus.INITIATOR_ERROR)
            ready = True
        self._operational(pairs, answers)
        transit = bool(req.transit and ready)
        nsg = req.nsg if transit else Stage.SECURITY
        if transit and self._stage is Stage.SECURITY and self._auth == "pending":
            transit = False
        if transit and nsg is Stage.FULL_FEATURE:
            if self._auth not in ("done", "none"):
                raise AuthenticationError("authentication was not completed")
            self._finish()
        elif transit:
            self._stage = nsg
        return LoginResponse(
            transit=transit, csg=req.csg, nsg=nsg, tsih=self.tsih if self.done else self._req_tsih,
            data=encode_text(answers), **base,  # type: ignore[arg-type]
        )

    def _start(self, keys: dict[str, str], answers: list[tuple[str, str]]) -> None:
        name = keys.get("InitiatorName")
        if not name:
            raise LoginFailed("InitiatorName missing", LoginStatus.MISSING_PARAMETER)
        problem = name_problem(name)
        if problem is not None:
            # RFC 7143 §11.13.5: a malformed request is an initiator error (0x0200)
            raise LoginFailed(f"invalid InitiatorName '{printable(name, 80)}': {problem}",
                              LoginStatus.INITIATOR_ERROR)
        self.initiator_name = name
        self.initiator_alias = keys.get("InitiatorAlias")
        self.session_type = keys.get("SessionType", "Normal")
        if self.session_type not in ("Normal", "Discovery"):
            raise LoginFailed("unknown SessionType", LoginStatus.SESSION_TYPE_NOT_SUPPORTED)
        target = keys.get("TargetName", "")
        if self.session_type == "Normal" and not target:
            raise LoginFailed("TargetName missing", LoginStatus.MISSING_PARAMETER)
        self.requested_target = target
        resolved = self._resolve(self.session_type, target, name)
        if isinstance(resolved, LoginFailed):
            raise resolved
        if isinstance(resolved, LoginStatus):
            raise LoginFailed(_STATUS_TEXT.get(resolved, "refused"), resolved)
        self._config = resolved
        self.target_name = resolved.target_name
        if self.session_type == "Normal":
            answers.append(("TargetPortalGroupTag", str(self.portal_group_tag)))
            if resolved.target_alias:
                answers.append(("TargetAlias", resolved.target_alias))

    def _security(self, keys: dict[str, str], answers: list[tuple[str, str]]) -> bool:
        assert self._config is not None
        required = bool(self._config.incoming)
        if self._auth == "pending":
            offer = keys.get("AuthMethod")
            if offer is None:
                if required:
                    raise AuthenticationError("CHAP required but AuthMethod not offered")
                self._auth = "none"
                return True
            methods = [m.strip() for m in offer.split(",")]
            if required:
                if "CHAP" not in methods:
                    raise AuthenticationError("this target requires CHAP")
                answers.append(("AuthMethod", "CHAP"))
                self._auth = "chap-a"
                return False
            if "None" in methods:
                answers.append(("AuthMethod", "None"))
                self._auth = "none"
                return True
            raise AuthenticationError("no CHAP account configured for this target")
        if self._auth == "chap-a":
            offer = keys.get("CHAP_A")
            if offer is None:
                raise AuthenticationError("CHAP_A missing")
            alg = chap.choose_algorithm(offer, self._chap_algorithms)
            if alg is None:
                raise AuthenticationError(f"no supported CHAP algorithm in {offer[:40]!r}")
            self._chap_alg = alg
            self._chap_id = self._random(1)[0]
            self._chap_challenge = self._random(chap.digest_size(alg))
            if self._challenges is not None:
                self._challenges.add(self._chap_challenge)
            answers += [("CHAP_A", str(alg)), ("CHAP_I", str(self._chap_id)),
                        ("CHAP_C", encode_hex(self._chap_challenge))]
            self._auth = "chap-r"
            return False
        if self._auth == "chap-r":
            user, resp = keys.get("CHAP_N"), keys.get("CHAP_R")
            if user is None or resp is None:
                raise AuthenticationError("CHAP_N or CHAP_R missing")
            got = chap.parse_response(resp, self._chap_alg)
            secret = self._config.incoming.get(user)
            ok = secret is not None and chap.verify(
                self._chap_alg, self._chap_id, secret, self._chap_challenge, got)
            if not ok:
                raise AuthenticationError("CHAP response did not match")
            self.auth_user = user
            if "CHAP_I" in keys or "CHAP_C" in keys:
                out = self._config.outgoing
                if out is None:
                    raise AuthenticationError("mutual CHAP asked but no OutgoingUser set")
                if secret is not None and out.secret == secret:
                    raise AuthenticationError("mutual CHAP with equal secrets refused")
                ident = chap.parse_identifier(keys.get("CHAP_I", ""))
                challenge = chap.parse_challenge(keys.get("CHAP_C", ""), self._chap_alg)
                if challenge == self._chap_challenge:
                    raise AuthenticationError("initiator reflected our CHAP challenge")
                if self._challenges is not None and challenge in self._challenges:
                    raise AuthenticationError(
                        f"CHAP user {user!r} sent a challenge this target issued to another "
                        "login: reflection refused")
                answers += [("CHAP_N", out.user), ("CHAP_R", encode_hex(
                    chap.response(self._chap_alg, ident, out.secret, challenge)))]
            self._auth = "done"
            return True
        return True

    def _operational(self, pairs: list[tuple[str, str]], answers: list[tuple[str, str]]) -> None:
        assert self._config is not None
        ours = {**OUR_DEFAULTS, **self._config.operational}
        discovery = self.session_type == "Discovery"
        for key, value in pairs:
            if key in SECURITY_KEYS or key in DECLARATIVE:
                continue
            if key == "MaxRecvDataSegmentLength":
                _answer, agreed = respond(key, value, ours)
                if agreed is None:
                    raise NegotiationError(f"bad MaxRecvDataSegmentLength={value}")
                self._peer_mrdsl = int(agreed)
                continue
            if discovery and key in ("HeaderDigest", "DataDigest"):
                answers.append((key, "None"))
                continue
            answer, agreed = respond(key, value, ours)
            answers.append((key, answer))
            if agreed is not None:
                self._agreed[key] = agreed
            elif answer == "Reject" and key in ("HeaderDigest", "DataDigest"):
                raise NegotiationError(f"{key}: no acceptable value in {value!r}")
        if self._stage is Stage.OPERATIONAL and not self._declared_mrdsl:
            answers.append(("MaxRecvDataSegmentLength", self._our_mrdsl(ours)))
            self._declared_mrdsl = True

    def _our_mrdsl(self, ours: Mapping[str, str]) -> str:
        return ours.get("MaxRecvDataSegmentLength", OUR_DEFAULTS["MaxRecvDataSegmentLength"])

    def _finish(self) -> None:
        assert self._config is not None
        if self._check_session is not None:
            refused = self._check_session(self.target_name, self.initiator_name, self.isid,
                                          self.auth_user)
            if refused is not None:
                raise refused
        ours = {**OUR_DEFAULTS, **self._config.operational}
        our_mrdsl = int(self._our_mrdsl(ours)) if self._declared_mrdsl else 8192
        # IET's MaxXmitDataSegmentLength caps what we send.
        peer = self._peer_mrdsl
        if "MaxXmitDataSegmentLength" in ours:
            peer = min(peer, int(ours["MaxXmitDataSegmentLength"]))
        self.params = SessionParams.from_agreed(
            self._agreed, our_mrdsl=our_mrdsl, peer_mrdsl=peer,
            session_type=self.session_type, initiator_name=self.initiator_name,
            target_name=self.target_name, initiator_alias=self.initiator_alias,
            target_alias=self._config.target_alias,
            target_portal_group_tag=self.portal_group_tag,
        )
        self.done = True
