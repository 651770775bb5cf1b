"""initiators.allow and targets.allow, with IET's semantics and its quirks fixed by default.

The first line whose first token is ALL or the target's name decides: access is granted
if one of its entries matches, refused otherwise.  A missing file allows everything; a
file without an applicable line refuses.  Files are re-read when they change; a file that
vanishes while the target runs keeps its last rules (a deleted list is not "allow all").
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Rule:
    target: str  # a target name, or ALL
    entries: tuple[str, ...]
    line: int


def bre_to_python(pattern: str) -> str:
    r"""Translate a POSIX basic regular expression into Python syntax (anchored by the caller).

    In a BRE, ``\( \) \{ \}`` group and count, and ``+ ? | ( ) { }`` are literals.
    """
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            out.append(nxt if nxt in "(){}" else "\\" + nxt)
            i += 2
            continue
        out.append("\\" + ch if ch in "+?|(){}" else ch)
        i += 1
    return "".join(out)


def parse_rules(text: str, *, exact_iet: bool = False) -> list[Rule]:
    rules = []
    lines = text.split("\n")
    for number, raw in enumerate(lines, 1):
        last_without_newline = number == len(lines)
        if last_without_newline and exact_iet:
            continue  # IET skipped a final line that lacked its newline
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        target, _, rest = line.partition(" ")
        if not rest.strip():
            target, _, rest = line.partition("\t")
        entries = tuple(e.strip() for e in rest.split(",") if e.strip())
        rules.append(Rule(target, entries, number))
    return rules


def _network(entry: str, exact_iet: bool) -> Network | None:
    text = entry
    if text.startswith("["):
        m = re.match(r"^\[([0-9a-fA-F:.]+)\](/\d+)?$", text)
        if not m:
            return None
        text = m[1] + (m[2] or "")
    try:
        net = ipaddress.ip_network(text, strict=exact_iet)
    except ValueError:
        return None
    if exact_iet and "/" in text and net.prefixlen == net.max_prefixlen:
        return None  # IET rejected /32 and /128
    return net


def _address_matches(entry: str, address: str, exact_iet: bool) -> bool:
    net = _network(entry, exact_iet)
    if net is None:
        return False
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return False
    if not exact_iet and isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.version == net.version and addr in net


def entry_matches(entry: str, initiator: str | None, address: str, *, exact_iet: bool = False,
                  allow_names: bool = True) -> bool:
    if entry == "ALL":
        return True
    if allow_names and initiator is not None and not re.match(r"^\[?[0-9a-fA-F:.]+\]?(/\d+)?$",
                                                              entry):
        try:
            if re.fullmatch(bre_to_python(entry), initiator):
                return True
        except re.error:
            return False
    return _address_matches(entry, address, exact_iet)


def decide(rules: list[Rule], target: str, initiator: str | None, address: str, *,
           exact_iet: bool = False, allow_names: bool = True) -> bool:
    for rule in rules:
        if rule.target in ("ALL", target):
            return any(entry_matches(e, initiator, address, exact_iet=exact_iet,
                                     allow_names=allow_names) for e in rule.entries)
    return False


class _AllowFile:
    def __init__(self, path: Path | None, exact_iet: bool) -> None:
        self.path = path
        self.exact_iet = exact_iet
        self._stamp: tuple[int, int] | None = None
        self._rules: list[Rule] | None = None
        self._vanished = False  # the file went away; its last rules are kept

    def rules(self) -> list[Rule] | None:
        """The current rules, or None if the file does not exist and never did since the
        start (allow all)."""
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._rules is not None and not self._vanished:
                log.warning("%s has vanished; keeping its last %d rules (to allow everyone, "
                            "write 'ALL ALL' in it)", self.path, len(self._rules))
                self._vanished = True
            return self._rules
        self._vanished = False
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                text = self.path.read_text()
            except OSError as exc:
                log.error("cannot read %s: %s; refusing access", self.path, exc)
                return []
            self._rules = parse_rules(text, exact_iet=self.exact_iet)
            self._stamp = stamp
            log.info("loaded %d rules from %s", len(self._rules), self.path)
        return self._rules


class AccessControl:
    def __init__(self, initiators_allow: Path | None, targets_allow: Path | None = None,
                 exact_iet: bool = False) -> None:
        self.exact_iet = exact_iet
        self._initiators = _AllowFile(initiators_allow, exact_iet)
        self._targets = _AllowFile(targets_allow, exact_iet)

    def initiator_allowed(self, target_name: str, initiator_name: str, address: str) -> bool:
        rules = self._initiators.rules()
        if rules is None:
            return True
        return decide(rules, target_name, initiator_name, address, exact_iet=self.exact_iet)

    def portal_allowed(self, target_name: str, local_address: str) -> bool:
        rules = self._targets.rules()
        if rules is None:
            return True
        return decide(rules, target_name, None, local_address, exact_iet=self.exact_iet,
                      allow_names=False)
