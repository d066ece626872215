"""The SMTP relay's intake: a message submitted over SMTP becomes one message per recipient."""

from __future__ import annotations

from collections.abc import Sequence
from email.parser import BytesHeaderParser
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate

from django.db import transaction

from api.models import ApiKey, Category, MessageSource, TransactionalMessage
from api.services.keys import sender_check
from api.services.messages import message_enqueue
from delivery.models import Delivery
from mailkit.compose import make_message_id
from mailkit.headerblock import headers_strip, originators_read
from mailkit.text import clean_text

_HEADER_PARSER = BytesHeaderParser(policy=SMTP_POLICY)


def messages_accept_raw(
    *, api_key: ApiKey, sender: str, recipients: Sequence[str], data: bytes
) -> list[TransactionalMessage]:
    """Accept a message submitted over SMTP: one message per envelope recipient.

    The content is kept as sent (a Message-ID and Date are added when missing, as RFC 6409
    section 8 lets a submission server do); the envelope recipients are used as given,
    never derived from To/Cc/Bcc. Nothing is stored when the header block is ambiguous
    (HeaderRefusal: the bytes travel as written, so no reader may see another From than ours),
    or SenderNotAllowed when a From, Sender, Resent-From or Resent-Sender mailbox (without a
    From, the envelope sender) is in a domain the key may not use.
    """
    found = originators_read(data)
    from_emails = list(found.from_addresses) or [sender]
    # The envelope sender is checked only when it stands in for a missing From: it never
    # leaves Skylark otherwise (the downstream MAIL FROM is our own return path).
    sender_check(api_key=api_key, from_emails=[*from_emails, *found.other_addresses])
    headers = _HEADER_PARSER.parsebytes(data)  # a strict block: it reads what we read
    from_email = from_emails[0]
    domain = (from_email.rpartition("@")[2] or "localhost").lower()
    prefix = b""
    # The header block was read strictly, but what the database stores must hold whatever a
    # parser made of bytes it could not decode (lone surrogates).
    message_id = clean_text(str(headers.get("Message-ID", "")).strip())
    if not message_id:
        message_id = make_message_id(domain=domain)
        prefix += f"Message-ID: {message_id}\r\n".encode()
    if headers.get("Date") is None:
        prefix += f"Date: {formatdate(usegmt=True)}\r\n".encode()
    # Bcc and Resent-Bcc must never travel with the message (RFC 5322 3.6.3, 3.6.6); the
    # Return-Path is the final receiver's to add (RFC 5321 4.4), as Postfix drops a client's;
    # a correlation header is ours to stamp (one per recipient's copy), never the client's.
    raw = prefix + headers_strip(data, ("bcc", "resent-bcc", "return-path", "x-skylark-delivery"))
    subject = clean_text(str(headers.get("Subject", "")))[:998]
    messages = []
    with transaction.atomic():
        for recipient in recipients:
            # One delivery per recipient; the correlation header is stamped at send time.
            delivery = Delivery.objects.create(email=recipient, message_id=message_id[:255])
            message = TransactionalMessage.objects.create(
                delivery=delivery,
                api_key=api_key,
                source=MessageSource.RELAY,
                category=Category.TRANSACTIONAL,
                from_email=from_email,
                subject=subject,
                raw=raw,
            )
            message_enqueue(message=message)
            messages.append(message)
    return messages
