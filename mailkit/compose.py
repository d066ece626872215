"""Per-recipient MIME composition from a per-campaign skeleton, as bytes, without EmailMessage."""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from mailkit.attachments import (
    attachment_content_id,
    attachment_content_type,
    clean_filename,
    filename_params,
)
from mailkit.errors import InvalidAddressError, InvalidHeaderError
from mailkit.render import RenderedContent
from mailkit.verp import keyed_reference, keyed_reference_parse

__all__ = [
    "Attachment",
    "Composer",
    "MessageSpec",
    "make_message_id",
    "message_id_delivery",
    "needs_smtputf8",
    "sanitize_header_value",
    "validate_address",
]

CRLF = b"\r\n"
# RFC 5322 2.1.1: lines SHOULD be <= 78 characters; encoded words are <= 75 (RFC 2047 2).
_FOLD_AT = 78
_MAX_ENCODED_WORD_BYTES = 45  # 45 bytes -> 60 base64 chars -> 72 with "=?utf-8?b?" and "?="

_RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "reply-to",
        "sender",
        "return-path",
        "list-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "dkim-signature",
        "x-skylark-campaign",
        "x-skylark-delivery",
    }
)


@dataclass(frozen=True)
class MessageSpec:
    from_email: str
    from_name: str = ""
    reply_to: str = ""
    list_id: str = ""  # e.g. "Newsletter <newsletter.42.example.com>"
    campaign_id: int | None = None
    extra_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Attachment:
    """A file sent with the message; with a content_id it is an inline part (``cid:`` in HTML)."""

    filename: str
    content_type: str
    data: bytes
    content_id: str = ""


# --------------------------------------------------------------------------------------------
# Header values

_CONTROL = {code: " " for code in (*range(0, 32), 127, *range(0x80, 0xA0), 0x2028, 0x2029)}


def sanitize_header_value(value: str) -> str:
    """Strip CR, LF, NUL, U+2028/2029 and other control characters; collapse whitespace."""
    return " ".join(str(value).translate(_CONTROL).split())


_ADDRESS_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\x9f\u2028\u2029,;:<>\"'()\[\]\\]")


def validate_address(address: str) -> str:
    """Return the address ready for a header (IDNA domain), or raise InvalidAddressError.

    Addresses with CR/LF, commas, angle brackets, quotes and the like are rejected rather than
    quoted: a bulk sender has no business sending to quoted local parts, and rejecting them is
    what keeps a hostile address from adding a recipient or a header.
    """
    if not isinstance(address, str) or not address or len(address) > 320:
        raise InvalidAddressError("empty or overlong address")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or "@" in local:
        raise InvalidAddressError("address must have exactly one @")
    if _ADDRESS_FORBIDDEN.search(address):
        raise InvalidAddressError("address contains a forbidden character")
    if len(local.encode()) > 64 or local.startswith(".") or local.endswith(".") or ".." in local:
        raise InvalidAddressError("invalid local part")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise InvalidAddressError("invalid internationalized domain") from exc
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?", domain) or ".." in domain:
        raise InvalidAddressError("invalid domain")
    return f"{local}@{domain}"


def needs_smtputf8(to_email: str, from_email: str) -> bool:
    """True when either address has a non-ASCII local part (RFC 6531); domains go via IDNA."""
    return any(not addr.rpartition("@")[0].isascii() for addr in (to_email, from_email))


def _encoded_words(text: str) -> list[str]:
    """RFC 2047 B-encoded words, split on character boundaries."""
    words: list[str] = []
    chunk: list[str] = []
    size = 0
    for char in text:
        width = len(char.encode())
        if size + width > _MAX_ENCODED_WORD_BYTES:
            words.append("".join(chunk))
            chunk, size = [], 0
        chunk.append(char)
        size += width
    if chunk:
        words.append("".join(chunk))
    return ["=?utf-8?b?" + base64.b64encode(w.encode()).decode("ascii") + "?=" for w in words]


def _fold_words(name: str, words: list[str]) -> str:
    """Join words into a header line folded before 78 characters where possible."""
    lines: list[str] = []
    current = f"{name}:"
    for word in words:
        if len(current) + 1 + len(word) > _FOLD_AT and current != f"{name}:":
            lines.append(current)
            current = " " + word
        else:
            current += " " + word
    lines.append(current)
    return "\r\n".join(lines) + "\r\n"


def _needs_encoding(text: str) -> bool:
    # "=?" would be decoded as an encoded word by readers: encode so the literal text survives.
    return not text.isascii() or "=?" in text or any(len(w) > 900 for w in text.split())


def _unstructured_header(name: str, value: str) -> bytes:
    value = sanitize_header_value(value)
    words = _encoded_words(value) if _needs_encoding(value) else value.split()
    return _fold_words(name, words or [""]).encode("ascii")


_PHRASE_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~ ]*")


def _display_name(name: str) -> list[str]:
    """Display-name words: atoms, one quoted string (RFC 5322 3.2.4), or encoded words."""
    name = sanitize_header_value(name)
    if not name:
        return []
    if _needs_encoding(name):
        return _encoded_words(name)
    if _PHRASE_ATOM.fullmatch(name):
        return name.split()
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return [f'"{escaped}"']


def _address_header(name: str, display_name: str, address: str) -> bytes:
    address = validate_address(address)
    words = _display_name(display_name)
    line = _fold_words(name, [*words, f"<{address}>"])
    # A non-ASCII local part is sent as raw UTF-8 (RFC 6532); the sender must use SMTPUTF8.
    return line.encode("utf-8")


_MESSAGE_ID = re.compile(r"<[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]+@[A-Za-z0-9.\-]+>")


_REFERENCE = re.compile(r"[A-Za-z0-9\-]{1,80}\.[a-z2-7]{16}")


def make_message_id(*, domain: str, delivery_id: int | None = None, secret: str = "") -> str:
    """A unique Message-ID in the sender's domain: "<[delivery.]time.unguessable@domain>".

    With a delivery id and a secret the last part is an HMAC tag of the rest, so a complaint
    that quotes the Message-ID proves it saw the message (`message_id_delivery`), cheaply
    (no random source on the per-recipient path); otherwise it is 64 random bits from the OS.
    """
    domain = validate_address(f"x@{domain}").partition("@")[2]
    stamp = f"{time.time_ns() // 1000:x}"
    if delivery_id is not None and secret:
        left = f"{int(delivery_id)}.{stamp}"
        left = keyed_reference(left, secret=secret)
    elif delivery_id is not None:
        left = f"{int(delivery_id)}.{stamp}.{secrets.token_hex(8)}"
    else:
        left = f"{stamp}.{secrets.token_hex(8)}"
    return f"<{left}@{domain}>"


def message_id_delivery(message_id: str, *, secret: str) -> int | None:
    """The delivery id of a Message-ID `make_message_id` signed with `secret`, else None."""
    left = (message_id or "").strip().strip("<>").partition("@")[0]
    key = keyed_reference_parse(left, secret=secret)
    if key is None:
        return None
    head = key.partition(".")[0]
    return int(head) if head.isdigit() and len(head) <= 18 else None


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _format_date(timestamp: float) -> str:
    # RFC 5322 3.3 in UTC, without the locale-dependent %a/%b of strftime.
    t = time.gmtime(timestamp)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
    )


def _check_url(url: str) -> str:
    if any(c in url for c in "<>\"' \t\r\n\x00,") or not url.isascii() or len(url) > 900:
        raise InvalidHeaderError("unsubscribe URL must be ASCII without spaces, quotes, <>, ,")
    return url


# --------------------------------------------------------------------------------------------
# Bodies

_LEADING_HAZARD = re.compile(rb"^(?:\.|From )", re.MULTILINE)


def _normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _encode_body(text: str) -> tuple[bytes, bytes]:
    """(Content-Transfer-Encoding, body with CRLF lines <= 76 octets)."""
    text = _normalize_newlines(text)
    if not text.endswith("\n"):
        text += "\n"
    data = text.encode("utf-8")
    if len(data) - len(text) > len(text) // 4:
        # Mostly non-ASCII (e.g. Chinese): base64 is a third smaller than quoted-printable.
        lines = base64.encodebytes(data)
        return b"base64", lines.replace(b"\n", CRLF)
    encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    # A leading "." (SMTP dot) or "From " (mbox) is encoded so no relay or mailbox rewrites it.
    encoded = _LEADING_HAZARD.sub(lambda m: b"=2E" if m.group(0) == b"." else b"=46rom ", encoded)
    return b"quoted-printable", encoded.replace(b"\n", CRLF)


# --------------------------------------------------------------------------------------------
# Attachments and inline parts (RFC 2046 multipart/mixed, RFC 2387 multipart/related)


def _attachment_part(attachment: Attachment) -> bytes:
    """Headers and base64 body (76-character lines, RFC 2045 6.8) of one attachment."""
    content_type = attachment_content_type(attachment.content_type)
    # Decode, then clean, then encode (RFC 2231): a name is cleaned as a receiver will read it.
    type_param, disposition_param = filename_params(clean_filename(attachment.filename))
    charset = ""
    if content_type.startswith("text/"):
        # A text file says its charset, or clients guess (and garble anything non-ASCII).
        try:
            attachment.data.decode("utf-8")
            charset = "; charset=utf-8"
        except UnicodeDecodeError:
            pass
    head = f"Content-Type: {content_type}{charset}{type_param}\r\n"
    head += "Content-Transfer-Encoding: base64\r\n"
    if attachment.content_id:
        head += f"Content-ID: <{attachment_content_id(attachment.content_id)}>\r\n"
        head += f"Content-Disposition: inline{disposition_param}\r\n"
    else:
        head += f"Content-Disposition: attachment{disposition_param}\r\n"
    body = base64.encodebytes(attachment.data).replace(b"\n", CRLF)
    return head.encode("ascii") + CRLF + body


def _multipart(boundary: bytes, parts: Sequence[bytes]) -> bytes:
    """A multipart body; the CRLF before each delimiter belongs to it (RFC 2046 5.1.1)."""
    return b"".join(b"--" + boundary + CRLF + part + CRLF for part in parts) + (
        b"--" + boundary + b"--"
    )


def _multipart_head(subtype: str, boundary: bytes, extra: str = "") -> bytes:
    head = f'Content-Type: multipart/{subtype};\r\n boundary="{boundary.decode()}"{extra}\r\n'
    return head.encode("ascii")


# Encoded attachments kept per Composer: a campaign sends the same files to every recipient.
_ATTACHMENT_CACHE_SIZE = 32

# --------------------------------------------------------------------------------------------
# The composer


class Composer:
    """Built once per campaign: holds the header lines and boundary every recipient shares."""

    def __init__(self, spec: MessageSpec) -> None:
        self.spec = spec
        self.from_email = validate_address(spec.from_email)
        self.domain = self.from_email.rpartition("@")[2]
        self._from = _address_header("From", spec.from_name, spec.from_email)
        shared = []
        if spec.reply_to:
            shared.append(_address_header("Reply-To", "", spec.reply_to))
        if spec.list_id:
            list_id = sanitize_header_value(spec.list_id)
            if not re.fullmatch(r"(?:[^<>]*<)?[A-Za-z0-9.\-]+>?", list_id):
                raise InvalidHeaderError("List-Id must look like 'Name <id.example.com>'")
            shared.append(_unstructured_header("List-Id", list_id))
        if spec.campaign_id is not None:
            shared.append(f"X-Skylark-Campaign: {int(spec.campaign_id)}\r\n".encode())
        for name, value in spec.extra_headers:
            if not re.fullmatch(r"[!-9;-~]{1,76}", name) or name.lower() in _RESERVED_HEADERS:
                raise InvalidHeaderError(f"extra header name not allowed: {name!r}")
            shared.append(_unstructured_header(name, value))
        self._shared = b"".join(shared)
        self._boundary = "=_sky_" + os.urandom(12).hex()
        boundary = self._boundary.encode()
        self._mime = (
            b"MIME-Version: 1.0\r\n"
            b'Content-Type: multipart/alternative;\r\n boundary="' + boundary + b'"\r\n\r\n'
        )
        self._text_head = (
            b"--" + boundary + b'\r\nContent-Type: text/plain; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: "
        )
        self._html_head = (
            b"\r\n--" + boundary + b'\r\nContent-Type: text/html; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: "
        )
        self._close = b"\r\n--" + boundary + b"--\r\n"
        self._mixed_boundary = ("=_sky_m_" + os.urandom(10).hex()).encode()
        self._related_boundary = ("=_sky_r_" + os.urandom(10).hex()).encode()
        self._attachment_parts: dict[Attachment, bytes] = {}

    def compose(
        self,
        *,
        to_email: str,
        to_name: str,
        content: RenderedContent,
        message_id: str,
        unsubscribe_url: str = "",
        unsubscribe_mailto: str = "",
        delivery_reference: str = "",
        date: float | None = None,
        attachments: Sequence[Attachment] = (),
    ) -> bytes:
        """One recipient's message as CRLF bytes, ready for DKIM signing and SMTP DATA."""
        if not _MESSAGE_ID.fullmatch(message_id):
            raise InvalidHeaderError("Message-ID must look like <left@domain>")
        parts = [
            self._from,
            _address_header("To", to_name, to_email),
            _unstructured_header("Subject", content.subject),
            f"Date: {_format_date(time.time() if date is None else date)}\r\n".encode(),
            f"Message-ID: {message_id}\r\n".encode(),
            self._shared,
        ]
        unsubscribe = []
        if unsubscribe_url:
            unsubscribe.append(f"<{_check_url(unsubscribe_url)}>")
        if unsubscribe_mailto:
            mailto = unsubscribe_mailto
            if not mailto.startswith("mailto:"):
                mailto = "mailto:" + mailto
            unsubscribe.append(f"<{_check_url(mailto)}>")
        if unsubscribe:
            parts.append(("List-Unsubscribe: " + ",\r\n ".join(unsubscribe) + "\r\n").encode())
            # RFC 8058: one-click only when there is an HTTPS (or HTTP) URI to POST to.
            if unsubscribe_url.startswith(("https://", "http://")):
                parts.append(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
        if delivery_reference:
            # A keyed reference (mailkit.verp.keyed_reference): what a report quotes of it
            # proves the report saw this message.
            if not _REFERENCE.fullmatch(delivery_reference):
                raise InvalidHeaderError("X-Skylark-Delivery must be a keyed reference")
            parts.append(f"X-Skylark-Delivery: {delivery_reference}\r\n".encode("ascii"))
        text_cte, text_body = _encode_body(content.text)
        html_cte, html_body = _encode_body(content.html)
        if attachments:
            parts.append(
                self._body_with_attachments(text_cte, text_body, html_cte, html_body, attachments)
            )
            return b"".join(parts)
        parts += [
            self._mime,
            self._text_head,
            text_cte,
            b"\r\n\r\n",
            text_body,
            self._html_head,
            html_cte,
            b"\r\n\r\n",
            html_body,
            self._close,
        ]
        return b"".join(parts)

    def _encoded_attachment(self, attachment: Attachment) -> bytes:
        part = self._attachment_parts.get(attachment)
        if part is None:
            part = _attachment_part(attachment)
            if len(self._attachment_parts) < _ATTACHMENT_CACHE_SIZE:
                self._attachment_parts[attachment] = part
        return part

    def _body_with_attachments(
        self,
        text_cte: bytes,
        text_body: bytes,
        html_cte: bytes,
        html_body: bytes,
        attachments: Sequence[Attachment],
    ) -> bytes:
        """MIME-Version, Content-Type and body when files travel with the message.

        multipart/mixed [ multipart/alternative [ text, multipart/related [ html, inline... ] ],
        attachment... ]; the mixed and related levels only when they have something to hold.
        """
        inline = [self._encoded_attachment(a) for a in attachments if a.content_id]
        files = [self._encoded_attachment(a) for a in attachments if not a.content_id]
        text = b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: '
        text += text_cte + CRLF + CRLF + text_body
        html = b'Content-Type: text/html; charset="utf-8"\r\nContent-Transfer-Encoding: '
        html += html_cte + CRLF + CRLF + html_body
        if inline:
            related = self._related_boundary
            head = _multipart_head("related", related, '; type="text/html"')
            html = head + CRLF + _multipart(related, [html, *inline])
        alternative = self._boundary.encode()
        body = _multipart_head("alternative", alternative) + CRLF
        body += _multipart(alternative, [text, html])
        if files:
            mixed = self._mixed_boundary
            body = _multipart_head("mixed", mixed) + CRLF + _multipart(mixed, [body, *files])
        return b"MIME-Version: 1.0\r\n" + body + CRLF
