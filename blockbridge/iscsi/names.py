"""iSCSI names (RFC 3720 §3.2.6, RFC 7143 §4.2.7) and peer text made safe for logs.

An iSCSI name is one of

- ``iqn.YYYY-MM.reversed.domain[:anything]``: a date when the naming authority owned the
  domain, the domain reversed, then whatever that authority chose;
- ``eui.`` and 16 hexadecimal digits (an EUI-64);
- ``naa.`` and 16 or 32 hexadecimal digits (an NAA identifier).

After the string profile of RFC 3722 (stringprep: case folded, NFKC normalised) a name
holds only ASCII letters, digits, ``-``, ``.`` and ``:``, and letters, marks and digits of
other scripts; never a space, a control character or other punctuation.  A name is at
most 223 bytes of UTF-8.  Names arrive in ASCII upper case from some peers; stringprep
maps them to lower case, so they are accepted here as the names they fold to.
"""

from __future__ import annotations

import re
import unicodedata

MAX_NAME_BYTES = 223

_IQN = re.compile(r"iqn\.(\d{4})-(\d{2})\.([^:]+)(:.*)?", re.S)
_HEX16 = re.compile(r"[0-9a-f]{16}")
_NAA = re.compile(r"[0-9a-f]{16}|[0-9a-f]{32}")
_ASCII_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.:")
_LABEL = re.compile(r"(?!-)[\w-]+(?<!-)")  # the characters are checked already


def _bad_character(name: str) -> str | None:
    for ch in name:
        if ch in _ASCII_ALLOWED:
            continue
        if ch.isascii():
            return f"the character {ch!r} is not allowed (only letters, digits, '-', '.' " \
                   "and ':')"
        if unicodedata.category(ch)[0] not in "LMN" or \
                unicodedata.normalize("NFKC", ch) != ch:
            return f"the character {ch!r} (U+{ord(ch):04X}) is not allowed"
    return None


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid iSCSI name, or None when it is one."""
    if not name:
        return "it is empty"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"it is longer than {MAX_NAME_BYTES} bytes"
    folded = "".join(c.lower() if c.isascii() else c for c in name)
    bad = _bad_character(folded)
    if bad is not None:
        return bad
    kind = folded[:4]
    if kind == "iqn.":
        m = _IQN.fullmatch(folded)
        if m is None:
            return "an iqn. name is iqn.YYYY-MM.reversed-domain[:unique-part]"
        if not 1 <= int(m[2]) <= 12:
            return f"{m[1]}-{m[2]} is not a year and month (YYYY-MM)"
        labels = m[3].split(".")
        if not all(_LABEL.fullmatch(label) for label in labels):
            return f"{m[3]!r} is not a reversed domain name"
        return None
    if kind == "eui.":
        if _HEX16.fullmatch(folded[4:]) is None:
            return "an eui. name is eui. and 16 hexadecimal digits"
        return None
    if kind == "naa.":
        if _NAA.fullmatch(folded[4:]) is None:
            return "a naa. name is naa. and 16 or 32 hexadecimal digits"
        return None
    return "it does not start with iqn., eui. or naa."


def is_valid_name(name: str) -> bool:
    return name_problem(name) is None


_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e"
                     r"\u2066-\u2069\ud800-\udfff]")


def _escape(m: re.Match[str]) -> str:
    code = ord(m[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, limit: int = 300) -> str:
    """Text a peer sent (a name, a key, an error built from them), safe for one log line:
    control characters, line and paragraph separators and bidirectional
    overrides are escaped (``\\n`` becomes ``\\x0a``), and long text is cut at ``limit``
    characters.  Text without such characters comes out unchanged."""
    s = str(text)
    cut = len(s) > limit
    s = _UNSAFE.sub(_escape, s[:limit])
    return s + "…" if cut else s
