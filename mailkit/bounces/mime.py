"""Walk a report's MIME tree: status and feedback parts, returned originals, readable text."""

from __future__ import annotations

import email
import email.parser
import email.policy
import html
import re
from dataclasses import dataclass, field
from email.message import Message

MAX_DEPTH = 12

_TAG_RE = re.compile(r"<(?:[^>\"']|\"[^\"]*\"|'[^']*')*>")
_HTML_BREAK_RE = re.compile(r"<\s*(?:br|/p|/div|/tr|/li|/h\d)\b[^>]*>", re.I)
_HTML_DROP_RE = re.compile(r"<(style|script|head)\b.*?</\1\s*>", re.I | re.S)
_DELIMITER_RE = re.compile(r"^--([0-9A-Za-z'()+_,./:=?-]{1,70})[ \t]*$", re.M)


@dataclass
class Found:
    """What a walk over the MIME tree collected."""

    dsn_text: list[str] = field(default_factory=list)
    feedback_text: list[str] = field(default_factory=list)
    originals: list[Message] = field(default_factory=list)
    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)


def walk(part: Message, found: Found, *, depth: int) -> None:
    """Collect into `found` what each part of the tree below `part` holds."""
    if depth > MAX_DEPTH:
        return
    ctype = part.get_content_type()
    payload = part.get_payload()
    if ctype in (
        "message/delivery-status",
        "message/global-delivery-status",
        "text/delivery-status",
    ):
        found.dsn_text.append(_fields_text(part))
    elif ctype == "message/feedback-report":
        found.feedback_text.append(_fields_text(part))
    elif ctype in ("message/rfc822", "message/global", "message/partial"):
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            found.originals.append(payload[0])
        elif isinstance(payload, str):
            found.originals.append(headers_from_text(_decode_text(part)))
    elif ctype in (
        "text/rfc822-headers",
        "text/rfc822-header",
        "message/rfc822-headers",
        "message/global-headers",
        "text/rfc822",
    ):
        found.originals.append(headers_from_text(_decode_text(part)))
    elif isinstance(payload, list):
        for sub in payload:
            if isinstance(sub, Message):
                walk(sub, found, depth=depth + 1)
    elif part.get_content_maintype() == "multipart" and isinstance(payload, str):
        # Broken boundaries (a "boundary=" parameter folded without indentation, as Verizon's
        # gateway writes it): recover the parts from the first delimiter line in the body,
        # else read the whole body as text.
        delimiter = _DELIMITER_RE.search(payload)
        if delimiter and depth < MAX_DEPTH:
            boundary = delimiter.group(1)
            inner = email.message_from_string(
                f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n{payload}',
                policy=email.policy.compat32,
            )
            if isinstance(inner.get_payload(), list):
                walk(inner, found, depth=depth + 1)
                return
        found.plain.append(payload)
    elif (
        part.get_content_maintype() == "text" or ctype == "application/octet-stream" and depth == 0
    ):
        if part.get_filename() and depth > 0:
            return  # an attached file, not the report's words
        text = _decode_text(part)
        if ctype == "text/html":
            found.html.append(text)
        else:
            found.plain.append(text)


def _decode_text(part: Message) -> str:
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if data is None:
        value = part.get_payload()
        return value if isinstance(value, str) else ""
    if not isinstance(data, bytes):
        return str(data)
    charset = (part.get_content_charset() or "utf-8").strip().strip("'\"").lower()
    if charset in ("ks_c_5601-1987", "ks_c_5601"):
        charset = "cp949"
    elif charset in ("gb2312", "gbk", "x-gbk"):
        charset = "gb18030"
    elif charset in ("unknown-8bit", "x-unknown", "us-ascii", "ascii"):
        charset = "utf-8"
    if b"\x1b$" in data and charset in ("utf-8", "iso-8859-1", "latin-1"):
        charset = "iso-2022-jp"  # undeclared ISO-2022-JP (RFC 1468): escape sequences say so
    try:
        return data.decode(charset, "replace")
    except (LookupError, ValueError):
        return data.decode("utf-8", "replace")


def _fields_text(part: Message) -> str:
    """The raw "Name: value" text of a delivery-status or feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        chunks = []
        for block in payload:
            if not isinstance(block, Message):
                continue
            lines = [f"{name}: {value}" for name, value in block.items()]
            body = block.get_payload()
            if isinstance(body, str) and body.strip():
                lines.append(body)
            chunks.append("\n".join(lines))
        return "\n\n".join(chunks)
    return _decode_text(part)


def html_to_text(text: str) -> str:
    """The words of an HTML part, with line breaks where its blocks end."""
    text = _HTML_DROP_RE.sub(" ", text)
    text = _HTML_BREAK_RE.sub("\n", text)
    return html.unescape(_TAG_RE.sub(" ", text))


def headers_from_text(text: str) -> Message:
    """The header lines of a returned original, maybe quoted ("> ") or indented by the MTA."""
    lines: list[str] = []
    for line in text.lstrip("\n").splitlines()[:300]:
        stripped = line.lstrip(">| ")
        if not stripped and lines:
            break
        lines.append(stripped)
    return email.parser.HeaderParser(policy=email.policy.compat32).parsestr("\n".join(lines))
