"""RFC 3464 delivery status notifications: per-recipient blocks, actions, status and diagnostic."""

from __future__ import annotations

from .classify import (
    classify_texts,
    find_reply_code,
    find_smtp_command,
    find_status,
    normalize_status,
)
from .headers import SPACE_RE, field_blocks, field_value, first_address, one_line
from .kinds import BounceKind, BounceReason, BounceRecipient


def dsn_blocks(texts: list[str]) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The per-message fields and the per-recipient field blocks of delivery-status texts."""
    message: dict[str, str] = {}
    recipients: list[dict[str, str]] = []
    for text in texts:
        for block in field_blocks(text):
            if "final-recipient" in block or "original-recipient" in block:
                recipients.append(block)
            elif not message and ("reporting-mta" in block or "original-envelope-id" in block):
                message = block
    return message, recipients


def dsn_recipient(
    block: dict[str, str],
    reporting_mta: str,
    text_blocks: dict[str, str],
    bounce_text: str,
) -> BounceRecipient | None:
    """The outcome for one per-recipient block, helped by the words of the report's text part."""
    address = ""
    for name in ("final-recipient", "original-recipient", "x-actual-recipient"):
        address = first_address(field_value(block.get(name, "")))
        if address:
            break
    action = block.get("action", "").strip().lower()
    status = normalize_status(block.get("status", ""))
    diagnostic = _decode_escapes(field_value(block.get("diagnostic-code", "")))
    reply_code = find_reply_code(diagnostic)
    if not status:
        status = find_status(diagnostic)
    mta = field_value(block.get("remote-mta", "")) or reporting_mta
    if action.startswith(("delivered", "relayed", "expanded")) or status.startswith("2"):
        return BounceRecipient(
            recipient=address or None,
            kind=BounceKind.NOT_BOUNCE,
            reason=BounceReason.DELIVERED,
            status=status,
            reply_code=reply_code,
            diagnostic=one_line(diagnostic),
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
            diagnostic=one_line(diagnostic),
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
    kind, reason = classify_texts(
        status=status, reply_code=reply_code, texts=texts, command=command
    )
    if field_value(block.get("final-recipient", "")).startswith(("|", "/")) and (
        kind == BounceKind.HARD or reason == BounceReason.OTHER
    ):
        # Delivery to a pipe or a file (Exim, Postfix and Sendmail write "|command"): the
        # local program failed, which says nothing about the address.
        kind, reason = BounceKind.SOFT, BounceReason.SYSTEM_ERROR
    return BounceRecipient(
        recipient=address or None,
        kind=kind,
        reason=reason,
        status=status,
        reply_code=reply_code,
        diagnostic=one_line(diagnostic),
        reporting_mta=mta,
    )


def _decode_escapes(text: str) -> str:
    """Decode ISO-2022-JP (RFC 1468) escape sequences left raw in a 7-bit field or text."""
    if "\x1b$" not in text:
        return text
    try:
        return text.encode("ascii").decode("iso-2022-jp")
    except (UnicodeError, ValueError):
        return text


def _transcript_command(diagnostic: str, bounce_text: str) -> str:
    """The SMTP command a reply answered, read from a session transcript in the report.

    Sendmail and Courier print the session (">>> DATA" / "<<< 550 ...") in the text part while
    the DSN carries only the reply: the command is the last one sent before that reply.
    """
    if not diagnostic or ">>>" not in bounce_text:
        return ""
    reply = SPACE_RE.sub(" ", diagnostic).strip()
    text = SPACE_RE.sub(" ", bounce_text)
    position = -1
    for needle in (reply[:60], reply[:9]):
        if len(needle) >= 9:
            position = text.find("<<< " + needle)
            if position >= 0:
                break
    if position < 0:
        return ""
    return find_smtp_command(text[max(0, position - 300) : position])
