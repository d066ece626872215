"""Parse one inbound report (DSN, MTA text bounce, ARF complaint, auto-reply) into a BounceReport."""

from __future__ import annotations

import email
import email.header
import email.parser
import email.policy
import html
import json
import logging
import re
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from .classify import (
    classify_failure,
    find_reply_code,
    find_smtp_command,
    find_status,
    normalize_status,
    reason_from_text,
)
from .kinds import BounceKind, BounceReason, BounceRecipient, BounceReport

logger = logging.getLogger(__name__)

# Bounce information sits at the top of a report; what follows is the returned original and
# its attachments. Parsing a bounded prefix keeps a 50 MB attachment from costing seconds.
MAX_PARSE_BYTES = 1 << 20
MAX_TEXT_CHARS = 60_000
MAX_DIAGNOSTIC_CHARS = 500
MAX_DEPTH = 12

_ADDR = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?\.)+[A-Za-z0-9-]{2,}"
_ADDR_RE = re.compile(_ADDR)
_SPACE_RE = re.compile(r"\s+")
_TAG_RE = re.compile(r"<(?:[^>\"']|\"[^\"]*\"|'[^']*')*>")
_HTML_BREAK_RE = re.compile(r"<\s*(?:br|/p|/div|/tr|/li|/h\d)\b[^>]*>", re.I)
_HTML_DROP_RE = re.compile(r"<(style|script|head)\b.*?</\1\s*>", re.I | re.S)

# Where a text bounce stops talking and the returned original starts.
_ORIGINAL_START_RE = re.compile(
    r"^[ \t]*(?:"
    r"-{2,}.{0,40}?(?:original message|copy of (?:the|your) message|returned message|"
    r"message (?:header|text|body|headers) follows?|headers? of (?:the |your )?(?:original|returned)|"
    r"unsent message|rfc ?822|original mail|undelivered message|message follows)"
    r"|[>| ]*(?:return-path|received|dkim-signature|x-received|message-id|content-type):[ \t]"
    r"|(?:below this line is a copy of the message|original message follows|"
    r"------ this is a copy of the message|the (?:original|returned) message (?:headers? )?follows?|"
    r"\*\* original message|--- below this line)"
    r")",
    re.I | re.M,
)

# Delay warnings written as text: the MTA is still trying (nothing has failed for good yet).
_STILL_TRYING_RE = re.compile(
    r"warning message only|will be retried|will continue (?:to try|trying)|still (?:trying|"
    r"undelivered)|delivery attempts will continue|has not yet been delivered|not been delivered yet",
    re.I,
)

_LIST_REFUSAL_RE = re.compile(
    r"(?:are|is) not (?:a )?(?:member|subscriber)s? (?:of|to) (?:this|the) (?:mailing )?list"
    r"[ \t\n]*<?(" + _ADDR + r")",
    re.I,
)
_DELIMITER_RE = re.compile(r"^--([0-9A-Za-z'()+_,./:=?-]{1,70})[ \t]*$", re.M)
_LEADING_CODES_RE = re.compile(r"[ \t]*[245]\d\d[ -](?:[245]\.\d{1,3}\.\d{1,3}[ \t]+)?")
_CONT_STATUS_REPLY_RE = re.compile(r"(?<![\d.])([245]\d\d)[ -]#?([245]\.\d{1,3}\.\d{1,3})\b")

# A line that names a recipient: optional label, the address (maybe in <> or quotes), then
# nothing, a separator or the start of an explanation.
_RECIPIENT_LINE_RE = re.compile(
    r"^[ \t]*(?:[245]\d\d[ -](?:[245]\.\d{1,3}\.\d{1,3}[ \t]+)?)?(?:(?:final-|original-)?(?:recipient|rcpt to|to|address|user|addressee|failed recipient"
    r"|recipient address|destinataire|empf(?:ae|ä)nger|could not be delivered to)s?(?:\(s\))?"
    r"[ \t]*:[ \t]*)?"
    r"(?:\"[^\"]*\"[ \t]*<|[^<>\n@:\d]{1,40}<|[<\[\"'])?(" + _ADDR + r")[>\]\"']?"
    r"[ \t]*(?:$|[:.,;]|\(|-|\bon\b|\bwas\b|\bfailed\b|\.\.\.|[ \t]+\S)",
    re.I | re.M,
)

_BOUNCE_FROM_RE = re.compile(
    r"mailer-?daemon|post_?master|mail ?delivery|mail-?daemon|double-?bounce|\bbounce|"
    r"mail administrator|mail system|nobody@|delivery ?(?:status|subsystem)|mailmaster",
    re.I,
)
_BOUNCE_SUBJECT_RE = re.compile(
    r"undeliver|undelivered|non[- ]?deliver|delivery (?:status|failure|failed|report|problem|"
    r"notification|has failed|error)|failure notice|returned mail|mail delivery|"
    r"could not be delivered|not delivered|delivery failed|mail system error|returned to sender|"
    r"bounce|rejected|unzustellbar|nicht zustellbar|non remis|no entregado|不達|退信|"
    r"未能送达|投递失败|failed delivery|warning: could not send|delayed mail|"
    r"message (?:status|delivery)|mail could not|delivery final|error sending|"
    r"エラー通知|配信エラー|送信エラー",
    re.I,
)
_AUTO_SUBJECT_RE = re.compile(
    r"out of (?:the )?office|auto(?:matic|matische|matisch)?[ -]?(?:reply|response|responder|"
    r"antwort|answer)|autoreply|auto-reply|vacation|on leave|abwesenheit|absence|"
    r"r[ée]ponse automatique|respuesta autom[aá]tica|fuera de la oficina|risposta automatica|"
    r"自动回复|自動回覆|自動応答|自動返信|不在",
    re.I,
)


@dataclass
class _Found:
    """What a walk over the MIME tree collected."""

    dsn_text: list[str] = field(default_factory=list)
    feedback_text: list[str] = field(default_factory=list)
    originals: list[Message] = field(default_factory=list)
    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)


def parse_bounce(raw: bytes) -> BounceReport:
    """Parse one raw message; never raises, returns what could be found."""
    try:
        return _parse(raw).storable()  # hostile bytes in any field must not stop the store
    except Exception:  # the contract is "never crash": a report with nothing in it
        logger.exception("bounce parse failed (%d bytes)", len(raw or b""))
        return BounceReport(recipients=())


def _parse(raw: bytes) -> BounceReport:
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    raw = bytes(raw or b"")[:MAX_PARSE_BYTES]
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    found = _Found()
    _walk(msg, found, depth=0)

    readable = "\n".join(found.plain) if found.plain else "\n".join(map(_html_to_text, found.html))
    readable = readable[:MAX_TEXT_CHARS]
    cut = _ORIGINAL_START_RE.search(readable)
    bounce_text = readable[: cut.start()] if cut else readable
    returned_text = readable[cut.start() :] if cut else ""

    originals = list(found.originals)
    if returned_text:
        originals.append(_headers_from_text(returned_text))

    dsn_message, dsn_recipients = _dsn_blocks(found.dsn_text)
    if not dsn_recipients and "recipient:" in readable.lower():
        # Some MTAs paste delivery-status fields into the text part (or break the MIME).
        dsn_message2, dsn_recipients = _dsn_blocks([readable])
        dsn_message = dsn_message or dsn_message2

    own = _own_addresses(msg)
    report_fields = {
        "envelope_to": _envelope_to(msg),
        "envid": _field_value(dsn_message.get("original-envelope-id", "")),
        "delivery_header": _delivery_header(originals, raw),
        "original_message_id": _original_message_id(originals),
    }

    ses = _ses_notification(readable)
    if ses is not None:
        return BounceReport(recipients=ses, **report_fields)

    if found.feedback_text or _is_feedback(msg, readable) or _hotmail_complaint(originals):
        recipients = _feedback_recipients(found.feedback_text, originals, readable)
        return BounceReport(recipients=recipients, **report_fields)

    reporting_mta = _field_value(dsn_message.get("reporting-mta", ""))
    if dsn_recipients:
        text_blocks = _text_blocks(bounce_text, own)
        parsed = (
            _dsn_recipient(block, reporting_mta, text_blocks, bounce_text)
            for block in dsn_recipients
        )
        recipients = tuple(r for r in parsed if r is not None)
        if recipients:
            return BounceReport(recipients=recipients, **report_fields)

    list_refusal = _LIST_REFUSAL_RE.search(bounce_text[:4000])
    if list_refusal:
        # A mailing-list manager (fml, Mailman, ezmlm) refused our post to the list: the list
        # address bounced, for policy, and it is still alive.
        recipient = BounceRecipient(
            recipient=list_refusal.group(1),
            kind=BounceKind.SOFT,
            reason=BounceReason.POLICY_BLOCK,
            diagnostic=_one_line(list_refusal.group(0)),
        )
        return BounceReport(recipients=(recipient,), **report_fields)

    looks_bounce = _looks_like_bounce(msg, bounce_text)
    if not looks_bounce and _is_auto_reply(msg):
        sender = _first_address(_header(msg, "from")) or None
        recipient = BounceRecipient(
            recipient=sender,
            kind=BounceKind.AUTO_REPLY,
            reason=BounceReason.AUTO_REPLY,
            diagnostic=_one_line(_header(msg, "subject")),
        )
        return BounceReport(recipients=(recipient,), **report_fields)
    if not looks_bounce:
        recipient = BounceRecipient(
            recipient=None, kind=BounceKind.NOT_BOUNCE, reason=BounceReason.NOT_BOUNCE
        )
        return BounceReport(recipients=(recipient,), **report_fields)

    recipients = _text_recipients(msg, bounce_text, own, originals, reporting_mta)
    return BounceReport(recipients=recipients, **report_fields)


# --- MIME walk -------------------------------------------------------------------------------


def _walk(part: Message, found: _Found, *, depth: int) -> None:
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
            found.originals.append(_headers_from_text(_decode_text(part)))
    elif ctype in (
        "text/rfc822-headers",
        "text/rfc822-header",
        "message/rfc822-headers",
        "message/global-headers",
        "text/rfc822",
    ):
        found.originals.append(_headers_from_text(_decode_text(part)))
    elif isinstance(payload, list):
        for sub in payload:
            if isinstance(sub, Message):
                _walk(sub, found, depth=depth + 1)
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
                _walk(inner, found, depth=depth + 1)
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


def _decode_escapes(text: str) -> str:
    """Decode ISO-2022-JP (RFC 1468) escape sequences left raw in a 7-bit field or text."""
    if "\x1b$" not in text:
        return text
    try:
        return text.encode("ascii").decode("iso-2022-jp")
    except (UnicodeError, ValueError):
        return text


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


def _html_to_text(text: str) -> str:
    text = _HTML_DROP_RE.sub(" ", text)
    text = _HTML_BREAK_RE.sub("\n", text)
    return html.unescape(_TAG_RE.sub(" ", text))


def _headers_from_text(text: str) -> Message:
    # Header lines of a returned original, maybe quoted ("> ") or indented by the MTA.
    lines: list[str] = []
    for line in text.lstrip("\n").splitlines()[:300]:
        stripped = line.lstrip(">| ")
        if not stripped and lines:
            break
        lines.append(stripped)
    return email.parser.HeaderParser(policy=email.policy.compat32).parsestr("\n".join(lines))


# --- Headers ---------------------------------------------------------------------------------


def _header(msg: Message, name: str) -> str:
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


def _first_address(value: str) -> str:
    match = _ADDR_RE.search(value or "")
    return match.group(0).strip(".") if match else ""


def _envelope_to(msg: Message) -> str:
    for name in ("x-original-to", "delivered-to", "envelope-to", "to"):
        address = _first_address(_header(msg, name))
        if address:
            return address
    return ""


def _own_addresses(msg: Message) -> set[str]:
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
            own.update(a.lower().strip(".") for a in _ADDR_RE.findall(str(value)))
    return own


def _delivery_header(originals: list[Message], raw: bytes) -> str:
    for original in originals:
        value = original.get("x-skylark-delivery")
        if value:
            return _SPACE_RE.sub("", str(value))
    match = re.search(rb"(?im)^[>| \t]*X-Skylark-Delivery:[ \t]*([^\s]+)", raw)
    return match.group(1).decode("ascii", "replace") if match else ""


def _original_message_id(originals: list[Message]) -> str:
    for original in originals:
        value = original.get("message-id")
        if value:
            return _SPACE_RE.sub("", str(value))
    return ""


# --- RFC 3464 delivery status ----------------------------------------------------------------


def _field_blocks(text: str) -> list[dict[str, str]]:
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
            if name not in current:
                current[name] = value.strip()
            last = name
        else:
            last = ""
    if current:
        blocks.append(current)
    return blocks


def _dsn_blocks(texts: list[str]) -> tuple[dict[str, str], list[dict[str, str]]]:
    message: dict[str, str] = {}
    recipients: list[dict[str, str]] = []
    for text in texts:
        for block in _field_blocks(text):
            if "final-recipient" in block or "original-recipient" in block:
                recipients.append(block)
            elif not message and ("reporting-mta" in block or "original-envelope-id" in block):
                message = block
    return message, recipients


def _field_value(value: str) -> str:
    """Drop the RFC 3464 type prefix ("rfc822;", "dns;", "smtp;")."""
    value = value.strip()
    head, sep, rest = value.partition(";")
    if sep and len(head) < 16 and " " not in head.strip():
        value = rest.strip()
    return value


def _dsn_recipient(
    block: dict[str, str],
    reporting_mta: str,
    text_blocks: dict[str, str],
    bounce_text: str,
) -> BounceRecipient | None:
    address = ""
    for name in ("final-recipient", "original-recipient", "x-actual-recipient"):
        address = _first_address(_field_value(block.get(name, "")))
        if address:
            break
    action = block.get("action", "").strip().lower()
    status = normalize_status(block.get("status", ""))
    diagnostic = _decode_escapes(_field_value(block.get("diagnostic-code", "")))
    reply_code = find_reply_code(diagnostic)
    if not status:
        status = find_status(diagnostic)
    mta = _field_value(block.get("remote-mta", "")) or reporting_mta
    if action.startswith(("delivered", "relayed", "expanded")) or status.startswith("2"):
        return BounceRecipient(
            recipient=address or None,
            kind=BounceKind.NOT_BOUNCE,
            reason=BounceReason.DELIVERED,
            status=status,
            reply_code=reply_code,
            diagnostic=_one_line(diagnostic),
            reporting_mta=reporting_mta,
        )
    text_block = text_blocks.get(address.lower(), "")
    if not diagnostic and text_block:
        diagnostic = text_block
        reply_code = reply_code or find_reply_code(text_block)
    if action.startswith("delayed"):
        return BounceRecipient(
            recipient=address or None,
            kind=BounceKind.SOFT,
            reason=BounceReason.DELAYED,
            status=status,
            reply_code=reply_code,
            diagnostic=_one_line(diagnostic),
            reporting_mta=mta,
        )
    texts = [diagnostic or text_block]
    if not status or status.endswith(".0.0"):
        texts.append(bounce_text)
    command = (
        find_smtp_command(diagnostic)
        or find_smtp_command(text_block)
        or _transcript_command(diagnostic, bounce_text)
    )
    kind, reason = _classify_texts(
        status=status, reply_code=reply_code, texts=texts, command=command
    )
    return BounceRecipient(
        recipient=address or None,
        kind=kind,
        reason=reason,
        status=status,
        reply_code=reply_code,
        diagnostic=_one_line(diagnostic),
        reporting_mta=mta,
    )


def _transcript_command(diagnostic: str, bounce_text: str) -> str:
    """The SMTP command a reply answered, read from a session transcript in the report.

    Sendmail and Courier print the session (">>> DATA" / "<<< 550 ...") in the text part while
    the DSN carries only the reply: the command is the last one sent before that reply.
    """
    if not diagnostic or ">>>" not in bounce_text:
        return ""
    reply = _SPACE_RE.sub(" ", diagnostic).strip()
    text = _SPACE_RE.sub(" ", bounce_text)
    position = -1
    for needle in (reply[:60], reply[:9]):
        if len(needle) >= 9:
            position = text.find("<<< " + needle)
            if position >= 0:
                break
    if position < 0:
        return ""
    return find_smtp_command(text[max(0, position - 300) : position])


def _command_before(address: str | None, bounce_text: str) -> str:
    """The last SMTP command a text report names just before it first names `address`.

    Sendmail, DragonFly and qmail write the command ("did not like our RCPT TO:", ">>> RCPT
    To:<a@b>") on the line above the reply that names the recipient.
    """
    if not address:
        return ""
    position = bounce_text.lower().find(address.lower())
    while position >= 0:
        line_start = bounce_text.rfind("\n", 0, position) + 1
        line_end = bounce_text.find("\n", position)
        before = bounce_text[max(0, line_start - 300) : line_end if line_end >= 0 else None]
        command = find_smtp_command(before)
        if command:
            return command
        position = bounce_text.lower().find(address.lower(), position + len(address))
    return ""


def _classify_texts(
    *,
    status: str,
    reply_code: int | None,
    texts: list[str],
    temporary: bool | None = None,
    command: str = "",
    words_alone: bool = False,
) -> tuple[BounceKind, BounceReason]:
    """Classify with the first text that says something we know."""
    chosen = ""
    for text in texts:
        if text and reason_from_text(text) is not None:
            chosen = text
            break
    # Only the failure's own words name its command: a transcript elsewhere in the report may
    # belong to another recipient.
    command = command or find_smtp_command(chosen or texts[0] if texts else "")
    return classify_failure(
        status=status,
        reply_code=reply_code,
        text=chosen,
        command=command,
        temporary=temporary,
        words_alone=words_alone,
    )


# --- RFC 5965 feedback reports ---------------------------------------------------------------


def _is_feedback(msg: Message, readable: str) -> bool:
    if msg.get_content_type() == "multipart/report":
        if str(msg.get_param("report-type") or "").lower() == "feedback-report":
            return True
    return bool(re.search(r"(?im)^feedback-type:\s*\S", readable))


def _feedback_recipients(
    texts: list[str], originals: list[Message], readable: str
) -> tuple[BounceRecipient, ...]:
    fields: dict[str, str] = {}
    for block in _field_blocks("\n\n".join(texts) or readable):
        for name, value in block.items():
            fields.setdefault(name, value)
    addresses: list[str] = []
    for name in ("original-rcpt-to", "removal-recipient"):
        address = _first_address(fields.get(name, ""))
        if address:
            addresses.append(address)
            break
    if not addresses:
        for original in originals:
            address = _first_address(str(original.get("x-hmxmroriginalrecipient", "")))
            address = address or _first_address(str(original.get("to", "")))
            if address:
                addresses.append(address)
                break
    feedback_type = fields.get("feedback-type", "abuse").strip().lower() or "abuse"
    return tuple(
        BounceRecipient(
            recipient=address,
            kind=BounceKind.COMPLAINT,
            reason=BounceReason.COMPLAINT,
            diagnostic=_one_line(fields.get("user-agent", "")),
            reporting_mta=_field_value(fields.get("reported-domain", "")),
            feedback_type=feedback_type,
        )
        for address in (addresses or [None])  # type: ignore[list-item]
    )


def _hotmail_complaint(originals: list[Message]) -> bool:
    # Microsoft JMRP reports are not ARF: the complained-about message comes back whole,
    # stamped with the original recipient.
    return any(original.get("x-hmxmroriginalrecipient") for original in originals)


# --- Amazon SES notifications (JSON by email, through SNS) -----------------------------------


def _json_object(text: str, start: int) -> dict[str, Any] | None:
    for candidate in (text[start:], text[start:].replace("\n", "")):
        try:
            value, _ = json.JSONDecoder().raw_decode(candidate)
        except ValueError:
            continue
        return value if isinstance(value, dict) else None
    return None


def _ses_notification(text: str) -> tuple[BounceRecipient, ...] | None:
    start = text.find('{"notificationType"')
    if start < 0:
        start = text.find('{"eventType"')
    if start < 0:
        return None
    data = _json_object(text, start)
    if data is None:
        # Wrapped or truncated JSON: decode the parts we need one by one.
        data = {}
        for name in ("notificationType", "eventType"):
            match = re.search(r'"' + name + r'"\s*:\s*"(\w+)"', text[start:])
            if match:
                data[name] = match.group(1)
        for name in ("bounce", "complaint", "delivery"):
            position = text.find(f'"{name}":{{', start)
            if position >= 0:
                data[name] = _json_object(text, text.index("{", position)) or {}
    kind = str(data.get("notificationType") or data.get("eventType") or "").lower()
    out: list[BounceRecipient] = []
    if kind == "bounce":
        bounce = data.get("bounce") or {}
        permanent = str(bounce.get("bounceType", "")).lower() == "permanent"
        mta = str(bounce.get("reportingMTA", ""))
        for item in bounce.get("bouncedRecipients") or ():
            diagnostic = _field_value(str(item.get("diagnosticCode", "")))
            status = normalize_status(str(item.get("status", ""))) or find_status(diagnostic)
            reply_code = find_reply_code(diagnostic)
            rkind, reason = classify_failure(
                status=status, reply_code=reply_code, text=diagnostic, temporary=not permanent
            )
            out.append(
                BounceRecipient(
                    recipient=_first_address(str(item.get("emailAddress", ""))) or None,
                    kind=rkind,
                    reason=reason,
                    status=status,
                    reply_code=reply_code,
                    diagnostic=_one_line(diagnostic),
                    reporting_mta=_field_value(mta),
                )
            )
    elif kind == "complaint":
        complaint = data.get("complaint") or {}
        for item in complaint.get("complainedRecipients") or ():
            out.append(
                BounceRecipient(
                    recipient=_first_address(str(item.get("emailAddress", ""))) or None,
                    kind=BounceKind.COMPLAINT,
                    reason=BounceReason.COMPLAINT,
                    feedback_type=str(complaint.get("complaintFeedbackType", "abuse")),
                )
            )
    elif kind == "delivery":
        delivery = data.get("delivery") or {}
        for address in delivery.get("recipients") or ():
            out.append(
                BounceRecipient(
                    recipient=_first_address(str(address)) or None,
                    kind=BounceKind.NOT_BOUNCE,
                    reason=BounceReason.DELIVERED,
                    diagnostic=_one_line(str(delivery.get("smtpResponse", ""))),
                    reply_code=find_reply_code(str(delivery.get("smtpResponse", ""))),
                    status=find_status(str(delivery.get("smtpResponse", ""))),
                    reporting_mta=str(delivery.get("reportingMTA", "")),
                )
            )
    return tuple(out) or None


# --- RFC 3834 auto-replies and non-standard text bounces -------------------------------------


def _is_auto_reply(msg: Message) -> bool:
    auto_submitted = _header(msg, "auto-submitted").strip().lower()
    if auto_submitted and not auto_submitted.startswith("no"):
        return True
    for name in ("x-autoreply", "x-autorespond", "x-auto-reply", "x-mail-autoreply", "x-vacation"):
        if msg.get(name) is not None:
            return True
    if _header(msg, "precedence").strip().lower() == "auto_reply":
        return True
    if (_header(msg, "x-autogenerated") or "").lower().startswith("reply"):
        return True
    return bool(_AUTO_SUBJECT_RE.search(_header(msg, "subject")))


def _looks_like_bounce(msg: Message, bounce_text: str) -> bool:
    if msg.get("x-failed-recipients"):
        return True
    if _AUTO_SUBJECT_RE.search(_header(msg, "subject")) and not _BOUNCE_SUBJECT_RE.search(
        _header(msg, "subject")
    ):
        return False
    if _BOUNCE_SUBJECT_RE.search(_header(msg, "subject")):
        return True
    if _BOUNCE_FROM_RE.search(_header(msg, "from")):
        return True
    return False


def _text_blocks(text: str, own: set[str]) -> dict[str, str]:
    """Map each recipient named at the start of a line to the lines that explain it."""
    blocks = _text_blocks_excluding(text, own)
    if not blocks and own:
        # Anonymised or self-addressed reports: the recipient may also be in our headers.
        blocks = _text_blocks_excluding(text, set())
    return blocks


def _text_blocks_excluding(text: str, own: set[str]) -> dict[str, str]:
    lines = text.splitlines()
    starts: list[tuple[int, str, str]] = []
    for index, line in enumerate(lines):
        match = _RECIPIENT_LINE_RE.match(line)
        if not match:
            continue
        address = match.group(1).strip(".")
        if address.lower() in own or _is_daemon(address):
            continue
        rest = line[match.end(1) :]
        codes = _LEADING_CODES_RE.match(line)
        if codes:
            # "550 5.1.1 <a@b>: ...": the codes before the address belong to the explanation.
            rest = codes.group(0) + rest.lstrip(" \t>:")
        starts.append((index, address, rest))
    blocks: dict[str, str] = {}
    for position, (index, address, rest) in enumerate(starts):
        end = starts[position + 1][0] if position + 1 < len(starts) else len(lines)
        body: list[str] = [rest.strip(" \t>:.")]
        blank = 0
        for line in lines[index + 1 : min(end, index + 16)]:
            if not line.strip():
                blank += 1
                if blank >= 2 and any(body):
                    break
                continue
            blank = 0
            body.append(line.strip())
        key = address.lower()
        joined = " ".join(b for b in body if b)
        if joined and joined not in blocks.get(key, ""):
            blocks[key] = (blocks.get(key, "") + " " + joined).strip()
        else:
            blocks.setdefault(key, "")
    return blocks


def _is_daemon(address: str) -> bool:
    local = address.split("@", 1)[0].lower()
    return local in ("mailer-daemon", "postmaster", "mailerdaemon", "mail-daemon", "double-bounce")


def _text_recipients(
    msg: Message,
    bounce_text: str,
    own: set[str],
    originals: list[Message],
    reporting_mta: str,
) -> tuple[BounceRecipient, ...]:
    blocks = _text_blocks(bounce_text, own)
    failed = [
        a.strip(".")
        for value in msg.get_all("x-failed-recipients") or ()
        for a in _ADDR_RE.findall(str(value))
    ]
    addresses: list[str] = []
    for address in failed + list(blocks):
        if address.lower() not in {a.lower() for a in addresses}:
            addresses.append(address)
    if failed:
        addresses = [a for a in addresses if a.lower() in {f.lower() for f in failed}]
    for exclude in (own, set()):
        if addresses:
            break
        for address in _ADDR_RE.findall(bounce_text):
            address = address.strip(".")
            if address.lower() not in exclude and not _is_daemon(address):
                addresses.append(address)
                break
    if not addresses:
        for original in originals:
            address = _first_address(str(original.get("x-hmxmroriginalrecipient", "")))
            address = address or _first_address(str(original.get("to", "")))
            if address:
                addresses.append(address)
                break
    out = []
    for address in addresses or [None]:  # type: ignore[list-item]
        block = blocks.get(address.lower(), "") if address else ""
        diagnostic = block if _has_signal(block) else bounce_text
        status, reply_code = _codes(diagnostic)
        kind, reason = _classify_texts(
            status=status,
            reply_code=reply_code,
            texts=[block, bounce_text],
            temporary=bool(_STILL_TRYING_RE.search(bounce_text)) or None,
            command=find_smtp_command(block) or _command_before(address, bounce_text),
            words_alone=True,
        )
        out.append(
            BounceRecipient(
                recipient=address,
                kind=kind,
                reason=reason,
                status=status,
                reply_code=reply_code,
                diagnostic=_diagnostic_line(diagnostic),
                reporting_mta=reporting_mta,
            )
        )
    return tuple(out)


def _has_signal(text: str) -> bool:
    return bool(text) and (bool(find_status(text)) or reason_from_text(text) is not None)


def _codes(text: str) -> tuple[str, int | None]:
    match = _CONT_STATUS_REPLY_RE.search(text)
    if match:
        return match.group(2), int(match.group(1))
    return find_status(text), find_reply_code(text)


def _diagnostic_line(text: str) -> str:
    """The most telling line of a text: the one with a reply code, else the first."""
    for line in text.splitlines():
        if _CONT_STATUS_REPLY_RE.search(line) or find_reply_code(line.strip()) is not None:
            return _one_line(line)
    return _one_line(text)


def _one_line(text: str) -> str:
    return _SPACE_RE.sub(" ", text or "").strip()[:MAX_DIAGNOSTIC_CHARS]
