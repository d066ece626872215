"""Parse one inbound report into a BounceReport: each format's reader, tried in order."""

from __future__ import annotations

import email
import email.policy
import logging
import re

from .arf import feedback_recipients, hotmail_complaint, is_feedback
from .autoreply import auto_reply_recipient, is_auto_reply
from .dsn import dsn_blocks, dsn_recipient
from .headers import (
    delivery_header,
    envelope_to,
    field_value,
    original_message_id,
    own_addresses,
)
from .kinds import BounceKind, BounceReason, BounceRecipient, BounceReport
from .mime import Found, headers_from_text, html_to_text, walk
from .mta_text import list_refusal, looks_like_bounce, text_blocks, text_recipients
from .provider import ses_notification

logger = logging.getLogger(__name__)

# Bounce information sits at the top of a report; what follows is the returned original and
# its attachments. Parsing a bounded prefix keeps a 50 MB attachment from costing seconds.
MAX_PARSE_BYTES = 1 << 20
MAX_TEXT_CHARS = 60_000

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
    found = Found()
    walk(msg, found, depth=0)

    readable = "\n".join(found.plain) if found.plain else "\n".join(map(html_to_text, found.html))
    readable = readable[:MAX_TEXT_CHARS]
    cut = _ORIGINAL_START_RE.search(readable)
    bounce_text = readable[: cut.start()] if cut else readable
    returned_text = readable[cut.start() :] if cut else ""

    originals = list(found.originals)
    if returned_text:
        originals.append(headers_from_text(returned_text))

    dsn_message, dsn_recipients = dsn_blocks(found.dsn_text)
    if not dsn_recipients and "recipient:" in readable.lower():
        # Some MTAs paste delivery-status fields into the text part (or break the MIME).
        dsn_message2, dsn_recipients = dsn_blocks([readable])
        dsn_message = dsn_message or dsn_message2
    if not dsn_recipients and (start := raw.lower().find(b"\nfinal-recipient:")) >= 0:
        # A delivery-status part the MIME walk could not reach (a part nested under a broken
        # boundary): its fields are still RFC 3464 fields, read from the raw text.
        window = raw[max(0, start - 4000) : start + 20000].decode("utf-8", "replace")
        dsn_message2, dsn_recipients = dsn_blocks([window.replace("\r\n", "\n")])
        dsn_message = dsn_message or dsn_message2

    own = own_addresses(msg)
    report_fields = {
        "envelope_to": envelope_to(msg),
        "envid": field_value(dsn_message.get("original-envelope-id", "")),
        "delivery_header": delivery_header(originals, raw),
        "original_message_id": original_message_id(originals),
    }

    # Provider JSON first: its fields are exact. Then complaints (RFC 5965, JMRP), RFC 3464
    # status, a list manager's refusal, an auto-reply (RFC 3834), and last the MTA's words.
    ses = ses_notification(readable)
    if ses is not None:
        return BounceReport(recipients=ses, **report_fields)

    if found.feedback_text or is_feedback(msg, readable) or hotmail_complaint(originals):
        recipients = feedback_recipients(found.feedback_text, originals, readable)
        return BounceReport(recipients=recipients, **report_fields)

    reporting_mta = field_value(dsn_message.get("reporting-mta", ""))
    if dsn_recipients:
        blocks = text_blocks(bounce_text, own)
        parsed = (
            dsn_recipient(block, reporting_mta, blocks, bounce_text) for block in dsn_recipients
        )
        recipients = tuple(r for r in parsed if r is not None)
        if recipients:
            return BounceReport(recipients=recipients, **report_fields)

    refusal = list_refusal(bounce_text)
    if refusal is not None:
        return BounceReport(recipients=(refusal,), **report_fields)

    looks_bounce = looks_like_bounce(msg, bounce_text)
    if not looks_bounce and is_auto_reply(msg):
        return BounceReport(recipients=(auto_reply_recipient(msg),), **report_fields)
    if not looks_bounce:
        recipient = BounceRecipient(
            recipient=None, kind=BounceKind.NOT_BOUNCE, reason=BounceReason.NOT_BOUNCE
        )
        return BounceReport(recipients=(recipient,), **report_fields)

    recipients = text_recipients(msg, bounce_text, own, originals, reporting_mta)
    return BounceReport(recipients=recipients, **report_fields)
