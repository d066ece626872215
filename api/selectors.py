"""Reads of the API app: messages and their events as the API shows them."""

from __future__ import annotations

import uuid
from typing import Any

from api import correlation
from api.models import ApiKey, Category, TransactionalMessage
from delivery.intake.models import BounceMessage
from delivery.tokens import read_token

# delivery.tokens purpose of a marketing message's unsubscribe link: its own salt, so a
# campaign's /u/ token (a delivery id) never works for a message, nor the other way round.
UNSUBSCRIBE_TOKEN_PURPOSE = "unsubscribe-message"


def message_for_key(*, api_key: ApiKey, public_id: uuid.UUID | str) -> TransactionalMessage | None:
    """A message sent by any key of the same application, or None."""
    try:
        public_id = uuid.UUID(str(public_id))
    except ValueError:
        return None
    return TransactionalMessage.objects.filter(
        public_id=public_id, api_key__application=api_key.application
    ).first()


def message_for_unsubscribe_token(token: str) -> TransactionalMessage | None:
    """The marketing message a List-Unsubscribe token was made for, or None (forged, other
    purpose, or not a marketing message)."""
    value = read_token(UNSUBSCRIBE_TOKEN_PURPOSE, token)
    if value is None or not 0 <= value < 1 << 128:
        return None
    return TransactionalMessage.objects.filter(
        public_id=uuid.UUID(int=value), category=Category.MARKETING
    ).first()


def message_by_return_path(address: str) -> TransactionalMessage | None:
    """The message this VERP return path was made for (api.correlation), or None."""
    message_pk = correlation.message_pk_from_return_path(address)
    if message_pk is None:
        return None
    return TransactionalMessage.objects.filter(pk=message_pk).first()


def message_by_correlation_key(key: str) -> TransactionalMessage | None:
    """The message of a "tx-<public id>" key as Skylark stores it (message_ref), or None."""
    public_id = correlation.public_id_from_key(key)
    if public_id is None:
        return None
    return TransactionalMessage.objects.filter(public_id=public_id).first()


def message_by_signed_key(value: str) -> TransactionalMessage | None:
    """The message a signed key from a report (ENVID, X-Skylark-Delivery) names, or None
    (unsigned, forged or tampered with)."""
    public_id = correlation.public_id_from_signed_key(value)
    if public_id is None:
        return None
    return TransactionalMessage.objects.filter(public_id=public_id).first()


def message_bounce_reports(message: TransactionalMessage) -> list[BounceMessage]:
    """The bounce reports tied to a message (through BounceMessage.message_ref), newest first."""
    key = correlation.correlation_key(message.public_id)
    return list(BounceMessage.objects.filter(message_ref=key).order_by("-received_at")[:50])


def message_status(message: TransactionalMessage) -> dict[str, Any]:
    return {
        "id": str(message.public_id),
        "status": message.status,
        "category": message.category,
        "to": message.to_email,
        "from_email": message.from_email,
        "subject": message.subject,
        "tags": message.tags,
        "message_id": message.message_id,
        "attempts": message.attempts,
        "smtp_code": message.smtp_code,
        "enhanced_status": message.enhanced_status,
        "smtp_reply": message.smtp_reply,
        "reason": message.reason,
        "created_at": message.created_at.isoformat(),
        "sent_at": message.sent_at.isoformat() if message.sent_at else None,
        "next_attempt_at": message.next_attempt_at.isoformat() if message.next_attempt_at else None,
    }


def message_events(message: TransactionalMessage) -> list[dict[str, Any]]:
    return [
        {
            "kind": event.kind,
            "at": event.created_at.isoformat(),
            "smtp_code": event.smtp_code,
            "enhanced_status": event.enhanced_status,
            "detail": event.detail,
        }
        for event in message.events.all()
    ]
