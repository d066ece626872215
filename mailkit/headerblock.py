"""Strict reading of a submitted message's header block: its originator mailboxes, or a refusal.

Pure module, no Django. The relay forwards a client's bytes as written, so the From-domain
lock must see the header block exactly as any receiver could: RFC 5322 section 2.2 and 3.6
(with the obsolete syntax of section 4.5 for comments, white space and phrases), CRLF only.
Anything two parsers could read differently (a space before the colon, a line without a colon,
a folded first line, bare CR or LF, NUL and other controls, a second From, group syntax,
source routes, encoded-words in an address) is refused rather than guessed at.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.header import decode_header

from mailkit.errors import DeliveryError

__all__ = ["HeaderRefusal", "Originators", "headers_strip", "originators_read"]

# Who the message says it is from (RFC 5322 3.6.2 and 3.6.6): each mailbox must pass the lock.
ORIGINATOR_FIELDS = ("from", "sender", "resent-from", "resent-sender")
SINGLE_MAILBOX_FIELDS = frozenset({"sender", "resent-sender"})
ONCE_FIELDS = frozenset({"from", "sender"})  # RFC 5322 3.6: at most one of each
MAX_LINE = 998  # RFC 5322 2.1.1, CRLF excluded
MAX_HEADER_BYTES = 1024 * 1024
MAX_HEADER_LINES = 5000  # real messages have a few dozen; bounds the time of every reader
MAX_COMMENT_DEPTH = 32
MAX_MAILBOXES = 100  # over all originator fields; bounds the lock's per-address checks
MAX_ORIGINATOR_FIELD = 16 * 1024  # unfolded; bounds the (per character) address reading

_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 3.6.8 ftext
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # HTAB is white space; CR/LF end lines
# C1 controls and Unicode line separators: some readers break lines on them. Bidi embeddings,
# overrides and isolates: "\u202eelpmaxe.live@good.example" displays as "...@evil.example".
_UNICODE_CONTROL = re.compile("[\u0080-\u009f\u2028\u2029\ufeff\u202a-\u202e\u2066-\u2069]")
# What an encoded-word in a display name must not decode to: a reader that decodes the field
# before it parses it ("Mailsploit") sees an address, a line break or a cut at a NUL there.
_DECODED_REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff\u202a-\u202e\u2066-\u2069<>@]")
_ATEXT_ASCII = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
_SPECIALS = frozenset('<>@,;:.[]"()\\')


class HeaderRefusal(DeliveryError):
    """The header block is malformed or ambiguous; the message must be refused (str says why)."""


@dataclass(frozen=True)
class Originators:
    """The mailboxes of From and of Sender, Resent-From and Resent-Sender, in order."""

    from_addresses: tuple[str, ...]
    other_addresses: tuple[str, ...]

    @property
    def all(self) -> tuple[str, ...]:
        return self.from_addresses + self.other_addresses


def originators_read(data: bytes) -> Originators:
    """Every originator mailbox of ``data``'s header block; HeaderRefusal when it is not clear."""
    fields = _header_fields(data)
    counts: dict[str, int] = {}
    found: dict[str, list[str]] = {name: [] for name in ORIGINATOR_FIELDS}
    for name, value in fields:
        if name not in found:
            continue
        counts[name] = counts.get(name, 0) + 1
        if name in ONCE_FIELDS and counts[name] > 1:
            raise HeaderRefusal(f"more than one {_title(name)} header")
        mailboxes = _mailboxes(_decoded(name, value), name)
        if name in SINGLE_MAILBOX_FIELDS and len(mailboxes) != 1:
            raise HeaderRefusal(f"the {_title(name)} header must name exactly one mailbox")
        found[name].extend(mailboxes)
        if sum(len(v) for v in found.values()) > MAX_MAILBOXES:
            raise HeaderRefusal(f"the originator headers name more than {MAX_MAILBOXES} mailboxes")
    others = found["sender"] + found["resent-from"] + found["resent-sender"]
    return Originators(from_addresses=tuple(found["from"]), other_addresses=tuple(others))


def headers_strip(data: bytes, names: Collection[str]) -> bytes:
    """``data`` without the header fields named (lowercase), folded lines included.

    HeaderRefusal unless the header block is strict, so that what is removed is exactly what
    every receiver would have read as that field.
    """
    _header_fields(data)
    kept = bytearray()
    position, skipping = 0, False
    while position < len(data):
        end = data.index(b"\n", position) + 1
        line = data[position:end]
        if line == b"\r\n":
            break
        if line[:1] not in (b" ", b"\t"):
            skipping = line.partition(b":")[0].decode("ascii").lower() in names
        if not skipping:
            kept += line
        position = end
    return bytes(kept) + data[position:]


def _title(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


# -- the header block -------------------------------------------------------------------------


def _header_fields(data: bytes) -> list[tuple[str, bytes]]:
    """(lowercase name, unfolded value) of each field, up to the first empty line."""
    fields: list[tuple[str, bytearray]] = []
    position = lines = 0
    while position < len(data):
        lines += 1
        if position > MAX_HEADER_BYTES or lines > MAX_HEADER_LINES:
            raise HeaderRefusal("the header block is too large")
        end = data.find(b"\n", position)
        if end == -1:
            raise HeaderRefusal("the header block does not end with an empty line")
        if end == position or data[end - 1 : end] != b"\r":
            raise HeaderRefusal("a header line ends with a bare LF (lines must end with CRLF)")
        line = data[position : end - 1]
        position = end + 1
        if not line:
            break  # the empty line: the body starts here for every reader
        if b"\r" in line:
            raise HeaderRefusal("a header line contains a bare CR")
        if len(line) > MAX_LINE:
            raise HeaderRefusal(f"a header line is longer than {MAX_LINE} characters")
        if _CONTROL.search(line):
            raise HeaderRefusal("a header line contains a NUL or another control character")
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise HeaderRefusal("the header block starts with a folded (indented) line")
            if not line.strip(b" \t"):
                raise HeaderRefusal("a header line holds only white space")
            fields[-1][1].extend(line)  # RFC 5322 3.2.2: unfolding removes the CRLF only
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            raise HeaderRefusal("a header line has no colon")
        if not _FIELD_NAME.fullmatch(name):
            if name.rstrip(b" \t") != name:
                raise HeaderRefusal(
                    "a header field name is followed by white space before its colon"
                )
            raise HeaderRefusal("a header field name has a character outside printable ASCII")
        fields.append((name.decode("ascii").lower(), bytearray(value)))
    # Ending without an empty line is a message without a body (RFC 5322 3.5): still strict.
    return [(name, bytes(value)) for name, value in fields]


def _decoded(name: str, value: bytes) -> str:
    if len(value) > MAX_ORIGINATOR_FIELD:
        raise HeaderRefusal(
            f"the {_title(name)} header is longer than {MAX_ORIGINATOR_FIELD} bytes"
        )
    try:
        text = value.decode("utf-8")  # RFC 6532: UTF-8 is the only 8-bit form allowed
    except UnicodeDecodeError:
        raise HeaderRefusal(f"the {_title(name)} header is not valid UTF-8") from None
    if _UNICODE_CONTROL.search(text):
        raise HeaderRefusal(f"the {_title(name)} header contains a control or bidi character")
    return text


# -- addresses (RFC 5322 3.4 with the obsolete forms of 4.4) ----------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # "atom" | "quoted" | "literal" | a special character
    text: str


def _tokens(text: str, name: str) -> list[_Token]:
    """Atoms, quoted strings, domain literals and specials; comments and white space dropped."""
    tokens: list[_Token] = []
    i, length = 0, len(text)
    while i < length:
        char = text[i]
        if char in " \t":
            i += 1
        elif char == "(":
            i = _skip_comment(text, i, name)
        elif char == '"':
            i, body = _quoted(text, i, '"', name)
            tokens.append(_Token("quoted", body))
        elif char == "[":
            i, body = _quoted(text, i, "]", name)
            tokens.append(_Token("literal", f"[{body[1:-1]}]"))
        elif char in _SPECIALS:
            if char in ")]\\":
                raise HeaderRefusal(f"the {_title(name)} header has a stray {char!r}")
            tokens.append(_Token(char, char))
            i += 1
        else:
            start = i
            while i < length and _atext(text[i]):
                i += 1
            if i == start:
                raise HeaderRefusal(f"the {_title(name)} header has an invalid character")
            tokens.append(_Token("atom", text[start:i]))
    return tokens


def _atext(char: str) -> bool:
    return char in _ATEXT_ASCII or (ord(char) > 127 and not char.isspace())


def _skip_comment(text: str, i: int, name: str) -> int:
    depth = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "(":
            depth += 1
            if depth > MAX_COMMENT_DEPTH:
                raise HeaderRefusal(f"the {_title(name)} header nests comments too deeply")
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise HeaderRefusal(f"the {_title(name)} header has an unclosed comment")


def _quoted(text: str, i: int, close: str, name: str) -> tuple[int, str]:
    """Index after the closing character and the quoted text with its delimiters."""
    start = i
    i += 1
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == close:
            return i + 1, text[start : i + 1]
        if close == "]" and char in "[":
            break
        i += 1
    what = "quoted string" if close == '"' else "domain literal"
    raise HeaderRefusal(f"the {_title(name)} header has an unclosed {what}")


def _mailboxes(text: str, name: str) -> list[str]:
    tokens = _tokens(text, name)
    if any(t.kind in (":", ";") for t in tokens):
        raise HeaderRefusal(
            f"the {_title(name)} header uses group syntax or a source route, which is not accepted"
        )
    # obs-mbox-list (RFC 5322 4.4): empty elements between commas are allowed and skipped.
    groups: list[list[_Token]] = [[]]
    for token in tokens:
        if token.kind == ",":
            groups.append([])
        else:
            groups[-1].append(token)
    mailboxes = [_mailbox(group, name) for group in groups if group]
    if not mailboxes:
        raise HeaderRefusal(f"the {_title(name)} header names no mailbox")
    return mailboxes


def _mailbox(tokens: list[_Token], name: str) -> str:
    kinds = [t.kind for t in tokens]
    if "<" not in kinds and ">" not in kinds:
        return _addr_spec(tokens, name)
    if kinds.count("<") != 1 or kinds.count(">") != 1 or kinds[-1] != ">":
        raise HeaderRefusal(f"the {_title(name)} header has unbalanced angle brackets")
    opening = kinds.index("<")
    for token in tokens[:opening]:  # the display name: a phrase (obs-phrase allows ".")
        if token.kind not in ("atom", "quoted", "."):
            raise HeaderRefusal(
                f"the {_title(name)} header has {token.text!r} in a display name (quote it)"
            )
    display = _phrase(tokens[:opening])
    if "=?" in display and _DECODED_REFUSED.search(_decoded_words(display)):
        raise HeaderRefusal(
            f"the {_title(name)} header has an encoded-word that decodes to an address, "
            "a control or a line break in its display name"
        )
    return _addr_spec(tokens[opening + 1 : -1], name)


def _phrase(tokens: list[_Token]) -> str:
    """The display name's words as written, "." joined without spaces (an encoded-word may
    hold a "." that split it into atoms)."""
    text = ""
    for index, token in enumerate(tokens):
        glued = index == 0 or token.kind == "." or tokens[index - 1].kind == "."
        text += token.text if glued else f" {token.text}"
    return text


def _decoded_words(text: str) -> str:
    """RFC 2047 encoded-words decoded as readers decode them (inside quotes too, as many do)."""
    try:
        return "".join(
            chunk.decode(charset or "ascii", "replace") if isinstance(chunk, bytes) else chunk
            for chunk, charset in decode_header(text)
        )
    except (HeaderParseError, LookupError, ValueError):
        return text  # a reader that cannot decode it shows it as written


def _addr_spec(tokens: list[_Token], name: str) -> str:
    kinds = [t.kind for t in tokens]
    if kinds.count("@") != 1:
        raise HeaderRefusal(f"the {_title(name)} header has an address without exactly one @")
    at = kinds.index("@")
    local = _dotted(tokens[:at], ("atom", "quoted"), name)
    domain_tokens = tokens[at + 1 :]
    if len(domain_tokens) == 1 and domain_tokens[0].kind == "literal":
        domain = domain_tokens[0].text
    else:
        domain = _dotted(domain_tokens, ("atom",), name)
    if "=?" in local or "=?" in domain:
        # RFC 2047 section 5: never in an addr-spec; a reader that decodes it sees another one.
        raise HeaderRefusal(f"the {_title(name)} header has an encoded-word in an address")
    if any(unicodedata.category(char) == "Cf" for char in local + domain):
        # Zero-width and other format characters: invisible, or dropped by one reader only.
        raise HeaderRefusal(f"the {_title(name)} header has an invisible character in an address")
    if not domain.isascii() and not _idna_stable(domain):
        raise HeaderRefusal(
            f"the {_title(name)} header has a domain that IDNA reads as another one"
        )
    return f"{local}@{domain}"


def _idna_stable(domain: str) -> bool:
    """True when IDNA maps the domain to itself: "straße" (IDNA 2003: "strasse", IDNA 2008:
    its own A-label), full-width letters and the ideographic full stop are read differently
    by different receivers, so a lock must not compare their mapped form."""
    try:
        return domain.encode("idna").decode("idna") == domain.lower()
    except UnicodeError:
        return False


def _dotted(tokens: list[_Token], kinds: tuple[str, ...], name: str) -> str:
    """word *("." word): the obs forms allow CFWS around the dots, already dropped."""
    if not tokens or len(tokens) % 2 == 0:
        raise HeaderRefusal(f"the {_title(name)} header has an invalid address")
    for index, token in enumerate(tokens):
        expected = kinds if index % 2 == 0 else (".",)
        if token.kind not in expected:
            raise HeaderRefusal(f"the {_title(name)} header has an invalid address")
    return "".join(t.text for t in tokens)
