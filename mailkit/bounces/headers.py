"""Readers shared by every format: decoded headers, addresses, "Name: value" fields, references."""

from __future__ import annotations

import email.header
import re
from email.message import Message

MAX_DIAGNOSTIC_CHARS = 500

ADDR = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?\.)+[A-Za-z0-9-]{2,}"
ADDR_RE = re.compile(ADDR)
SPACE_RE = re.compile(r"\s+")


def header(msg: Message, name: str) -> str:
    """The decoded text of one header, "" when it is missing."""
    value = msg.get(name)
    if value is None:
        return ""
    if isinstance(value, email.header.Header):
        # compat32 wraps raw 8-bit headers (RFC 6532) as "unknown-8bit": most are UTF-8.
        value = "".join(
            chunk.decode("utf-8", "replace") if isinstance(chunk, bytes) else chunk
            for chunk, _ in email.header.decode_header(value)
        )
    if not isinstance(value, str):
        value = str(value)
    if any("\udc80" <= ch <= "\udcff" for ch in value):
        # Raw 8-bit header (RFC 6532 style): compat32 keeps the bytes as surrogates.
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    try:
        chunks = email.header.decode_header(str(value))
        out = []
        for chunk, charset in chunks:
            if isinstance(chunk, bytes):
                try:
                    out.append(chunk.decode(charset or "utf-8", "replace"))
                except LookupError:
                    out.append(chunk.decode("utf-8", "replace"))
            else:
                out.append(chunk)
        return "".join(out)
    except Exception:
        return str(value)


def first_address(value: str) -> str:
    """The first address in a text, "" when there is none."""
    match = ADDR_RE.search(value or "")
    return match.group(0).strip(".") if match else ""


def one_line(text: str) -> str:
    """A text as one bounded line, for a diagnostic."""
    return SPACE_RE.sub(" ", text or "").strip()[:MAX_DIAGNOSTIC_CHARS]


def envelope_to(msg: Message) -> str:
    """The address the report was delivered to (our VERP address, when it is one)."""
    for name in ("x-original-to", "delivered-to", "envelope-to", "to"):
        address = first_address(header(msg, name))
        if address:
            return address
    return ""


def own_addresses(msg: Message) -> set[str]:
    """Addresses of the report's sender and of us, its addressee: never the bounced recipient."""
    own: set[str] = set()
    for name in (
        "from",
        "to",
        "return-path",
        "x-original-to",
        "delivered-to",
        "envelope-to",
        "sender",
        "reply-to",
    ):
        for value in msg.get_all(name) or ():
            own.update(a.lower().strip(".") for a in ADDR_RE.findall(str(value)))
    return own


def original_recipient(originals: list[Message]) -> str:
    """The recipient a returned original was addressed to, "" when none says."""
    for original in originals:
        address = first_address(str(original.get("x-hmxmroriginalrecipient", "")))
        address = address or first_address(str(original.get("to", "")))
        if address:
            return address
    return ""


def delivery_header(originals: list[Message], raw: bytes) -> str:
    """X-Skylark-Delivery of the returned original, else wherever the raw report quotes it."""
    for original in originals:
        value = original.get("x-skylark-delivery")
        if value:
            return SPACE_RE.sub("", str(value))
    match = re.search(rb"(?im)^[>| \t]*X-Skylark-Delivery:[ \t]*([^\s]+)", raw)
    return match.group(1).decode("ascii", "replace") if match else ""


def original_message_id(originals: list[Message]) -> str:
    """Message-ID of the first returned original that has one."""
    for original in originals:
        value = original.get("message-id")
        if value:
            return SPACE_RE.sub("", str(value))
    return ""


_RECIPIENT_FIELDS = frozenset({"final-recipient", "original-recipient"})


def field_blocks(text: str) -> list[dict[str, str]]:
    """Split "Name: value" text into blank-line separated blocks (RFC 3464 section 2)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current, last = {}, ""
            continue
        if line[0] in " \t" and last:
            current[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if sep and name and " " not in name and len(name) < 40:
            if name in current and name in _RECIPIENT_FIELDS:
                # RFC 3464 blocks run together without their blank line (AOL writes them so):
                # a second recipient field starts the next recipient's block.
                blocks.append(current)
                current = {}
            if name not in current:
                current[name] = value.strip()
            last = name
        else:
            last = ""
    if current:
        blocks.append(current)
    return blocks


def field_value(value: str) -> str:
    """Drop the RFC 3464 type prefix ("rfc822;", "dns;", "smtp;")."""
    value = value.strip()
    head, sep, rest = value.partition(";")
    if sep and len(head) < 16 and " " not in head.strip():
        value = rest.strip()
    return value
