"""The initiator's side of the login (RFC 7143 section 6.3, 11.12-11.13), sans-IO.

One response in, the next request out; randomness (CHAP challenges) is injected, and
nothing here touches a socket.  The target's side is :class:`~.login.TargetLogin`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from . import chap
from .constants import ISCSI_VERSION, LoginStatus, Stage
from .errors import AuthenticationError, LoginFailed, NegotiationError
from .login import ChapCredentials, describe_status
from .names import name_problem, printable
from .params import DECLARATIVE, KEYS, OUR_DEFAULTS, SessionParams, check_answer, respond
from .pdu import LoginRequest, LoginResponse
from .text import TextAssembler, decode_text, encode_hex, encode_text


class InitiatorLogin:
    """The initiator's side of a login: produces requests, consumes responses."""

    def __init__(
        self,
        *,
        initiator_name: str,
        target_name: str | None,
        isid: bytes,
        tsih: int = 0,
        cid: int = 0,
        credentials: ChapCredentials | None = None,
        target_credentials: ChapCredentials | None = None,
        proposals: Mapping[str, str] | None = None,
        random_bytes: Callable[[int], bytes],
        chap_algorithms: tuple[int, ...] = chap.DEFAULT_PREFERENCE,
        initiator_alias: str | None = None,
    ) -> None:
        problem = name_problem(initiator_name)
        if problem is not None:  # never sent: RFC 3720 §3.2.6 names only
            raise LoginFailed(f"our initiator name '{printable(initiator_name, 80)}' is not a "
                              f"valid iSCSI name: {problem}", LoginStatus.INITIATOR_ERROR)
        self.initiator_name = initiator_name
        self.target_name = target_name
        self.isid = isid
        self.tsih = tsih
        self.cid = cid
        self.credentials = credentials
        self.target_credentials = target_credentials
        self._random = random_bytes
        self._chap_algorithms = chap_algorithms
        self._alias = initiator_alias
        self.discovery = target_name is None
        ours = dict(OUR_DEFAULTS)
        if self.discovery:
            ours = {"MaxRecvDataSegmentLength": "32768", "HeaderDigest": "None",
                    "DataDigest": "None"}
        ours.update(proposals or {})
        self._ours = ours
        self._offered: dict[str, str] = {}
        self._agreed: dict[str, str] = {}
        self._peer_mrdsl = 8192
        self._stage = Stage.SECURITY
        self._auth = "offer"
        self._chap_alg = chap.MD5
        self._my_challenge = b""
        self._my_id = 0
        self._text = TextAssembler()
        self._itt = 0
        self.cmdsn = 0
        self.statsn = 0
        self.expcmdsn = 0
        self.maxcmdsn = 0
        self.target_portal_group_tag: int | None = None
        self.target_alias: str | None = None
        self.params = SessionParams()
        self.done = False

    @property
    def negotiating_algorithm(self) -> bool:
        """True while the target has not yet accepted one of our CHAP_A values."""
        return self._auth == "chap-a"

    def _request(self, pairs: list[tuple[str, str]], *, transit: bool, nsg: Stage) -> LoginRequest:
        return LoginRequest(
            itt=self._itt, transit=transit, csg=self._stage, nsg=nsg if transit else Stage.SECURITY,
            isid=self.isid, tsih=self.tsih, cid=self.cid, cmdsn=self.cmdsn,
            expstatsn=self.statsn + 1 if self.statsn else 0, data=encode_text(pairs),
            version_max=ISCSI_VERSION, version_min=ISCSI_VERSION,
        )

    def start(self, cmdsn: int = 1, expstatsn: int = 0, itt: int = 0) -> LoginRequest:
        self.cmdsn, self._itt = cmdsn, itt
        pairs = [("InitiatorName", self.initiator_name)]
        if self._alias:
            pairs.append(("InitiatorAlias", self._alias))
        if self.discovery:
            pairs.append(("SessionType", "Discovery"))
        else:
            assert self.target_name is not None
            pairs += [("SessionType", "Normal"), ("TargetName", self.target_name)]
        if self.credentials is not None:
            pairs.append(("AuthMethod", "CHAP,None"))
            return self._request(pairs, transit=False, nsg=Stage.OPERATIONAL)
        pairs.append(("AuthMethod", "None"))
        return self._request(pairs, transit=True, nsg=Stage.OPERATIONAL)

    def _operational_offer(self) -> list[tuple[str, str]]:
        pairs = []
        for key, value in self._ours.items():
            if key in self._offered:
                continue
            self._offered[key] = value
            if key == "MaxRecvDataSegmentLength" or key in KEYS:
                pairs.append((key, value))
        return pairs

    def receive(self, resp: LoginResponse) -> LoginRequest | None:
        if resp.status_class != 0:
            status = (resp.status_class << 8) | resp.status_detail
            try:
                code = LoginStatus(status)
            except ValueError:
                code = LoginStatus.INITIATOR_ERROR if resp.status_class == 2 else \
                    LoginStatus.TARGET_ERROR
            what = self.target_name or "discovery"
            raise LoginFailed(f"{what}: {describe_status(resp.status_class, resp.status_detail)}",
                              code)
        self.statsn = resp.statsn
        self.expcmdsn, self.maxcmdsn = resp.expcmdsn, resp.maxcmdsn
        if self.tsih == 0 or resp.transit:
            self.tsih = resp.tsih or self.tsih
        self._text.add(resp.data)
        if resp.cont:
            return self._request([], transit=False, nsg=Stage.OPERATIONAL)
        keys = dict(decode_text(self._text.take()))
        if "TargetPortalGroupTag" in keys and keys["TargetPortalGroupTag"].isdigit():
            self.target_portal_group_tag = int(keys["TargetPortalGroupTag"])
        if "TargetAlias" in keys:
            self.target_alias = keys["TargetAlias"]
        if self._stage is Stage.SECURITY:
            out = self._security(keys, resp)
            if out is not None:
                return out
        else:
            self._answers(keys)
        if resp.transit and resp.nsg is Stage.FULL_FEATURE:
            self._finish()
            return None
        if resp.transit:
            self._stage = resp.nsg
        if self._stage is Stage.OPERATIONAL:
            pairs = self._operational_offer() + self._counter_offers(keys)
            return self._request(pairs, transit=True, nsg=Stage.FULL_FEATURE)
        return self._request([], transit=True, nsg=Stage.OPERATIONAL)

    def _security(self, keys: dict[str, str], resp: LoginResponse) -> LoginRequest | None:
        if self._auth == "offer":
            method = keys.get("AuthMethod", "None")
            if method == "CHAP" and self.credentials is not None:
                self._auth = "chap-a"
                algs = ",".join(str(a) for a in self._chap_algorithms)
                return self._request([("CHAP_A", algs)], transit=False, nsg=Stage.OPERATIONAL)
            if method == "None" and self.target_credentials is not None:
                raise AuthenticationError("the target skipped authentication but mutual CHAP "
                                          "was required")
            if method not in ("None", "CHAP"):
                raise AuthenticationError(f"target chose unsupported AuthMethod {method!r}")
            if method == "CHAP":
                raise AuthenticationError("the target requires CHAP but no credentials are set")
            self._auth = "done"
            return None
        if self._auth == "chap-a":
            alg_text = keys.get("CHAP_A", "")
            if not alg_text.isdigit() or int(alg_text) not in self._chap_algorithms:
                raise AuthenticationError(f"target chose CHAP algorithm {alg_text!r} "
                                          "that we did not offer")
            self._chap_alg = int(alg_text)
            self._auth = "chap-r"  # the algorithm is agreed: a failure now is no refusal of it
            ident = chap.parse_identifier(keys.get("CHAP_I", ""))
            challenge = chap.parse_challenge(keys.get("CHAP_C", ""), self._chap_alg)
            if len(challenge) < chap.digest_size(self._chap_alg):
                raise AuthenticationError(
                    f"the target's CHAP challenge is {len(challenge)} bytes, shorter than "
                    f"the {chap.digest_size(self._chap_alg)}-byte {chap.NAMES[self._chap_alg]}"
                    " digest: refused (a short challenge lets answers be collected and "
                    "replayed)")
            assert self.credentials is not None
            pairs = [("CHAP_N", self.credentials.user), ("CHAP_R", encode_hex(
                chap.response(self._chap_alg, ident, self.credentials.secret, challenge)))]
            if self.target_credentials is not None:
                if self.target_credentials.secret == self.credentials.secret:
                    raise AuthenticationError("mutual CHAP with equal secrets refused")
                self._my_id = self._random(1)[0]
                self._my_challenge = self._random(chap.digest_size(self._chap_alg))
                if self._my_challenge == challenge:
                    self._my_challenge = bytes(b ^ 0xFF for b in self._my_challenge)
                pairs += [("CHAP_I", str(self._my_id)), ("CHAP_C", encode_hex(self._my_challenge))]
            self._auth = "chap-r"
            return self._request(pairs, transit=True, nsg=Stage.OPERATIONAL)
        if self._auth == "chap-r":
            if self.target_credentials is not None:
                user, resp_text = keys.get("CHAP_N"), keys.get("CHAP_R")
                if user is None or resp_text is None:
                    raise AuthenticationError("the target did not answer our CHAP challenge")
                got = chap.parse_response(resp_text, self._chap_alg)
                if user != self.target_credentials.user or not chap.verify(
                    self._chap_alg, self._my_id, self.target_credentials.secret,
                    self._my_challenge, got,
                ):
                    raise AuthenticationError("the target failed mutual CHAP authentication")
            self._auth = "done"
            if not resp.transit:
                return self._request([], transit=True, nsg=Stage.OPERATIONAL)
        return None

    def _answers(self, keys: dict[str, str]) -> None:
        for key, value in keys.items():
            if key == "MaxRecvDataSegmentLength":
                if not value.isdigit() or not 512 <= int(value) <= 16777215:
                    raise NegotiationError(f"target declared MaxRecvDataSegmentLength={value}")
                self._peer_mrdsl = int(value)
            elif key in self._offered and key in KEYS:
                self._agreed[key] = check_answer(key, self._offered[key], value)

    def _counter_offers(self, keys: dict[str, str]) -> list[tuple[str, str]]:
        """Keys the target offered on its own: answer them."""
        out = []
        for key, value in keys.items():
            if key in self._offered or key in DECLARATIVE or key == "MaxRecvDataSegmentLength":
                continue
            if key in KEYS or key.startswith("X"):
                answer, agreed = respond(key, value, self._ours)
                out.append((key, answer))
                self._offered[key] = answer
                if agreed is not None:
                    self._agreed[key] = agreed
        return out

    def _finish(self) -> None:
        if self.credentials is None and self._auth != "done":
            self._auth = "done"
        if self.target_credentials is not None and self._auth != "done":
            raise AuthenticationError("login completed without mutual authentication")
        our_mrdsl = int(self._ours.get("MaxRecvDataSegmentLength", "8192"))
        if "MaxRecvDataSegmentLength" not in self._offered:
            our_mrdsl = 8192
        self.params = SessionParams.from_agreed(
            self._agreed, our_mrdsl=our_mrdsl, peer_mrdsl=self._peer_mrdsl,
            session_type="Discovery" if self.discovery else "Normal",
            initiator_name=self.initiator_name, target_name=self.target_name or "",
            initiator_alias=self._alias, target_alias=self.target_alias,
            target_portal_group_tag=self.target_portal_group_tag,
        )
        self.done = True
