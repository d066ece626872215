"""Reads of the API app: messages and their events as the API shows them."""

from __future__ import annotations

import uuid
from typing import Any

from api.models import ApiKey, Category, TransactionalMessage
from delivery.intake.models import BounceMessage
from delivery.tokens import read_token

# delivery.tokens purpose of a marketing message's unsubscribe link: its own salt, so a
# campaign's /u/ token (a delivery id) never works for a message, nor the other way round.
UNSUBSCRIBE_TOKEN_PURPOSE = "unsubscribe-message"


def message_for_key(*, api_key: ApiKey, public_id: uuid.UUID | str) -> TransactionalMessage | None:
    """A message sent by any key of the same application, with its delivery, or None."""
    try:
        public_id = uuid.UUID(str(public_id))
    except ValueError:
        return None
    return (
        TransactionalMessage.objects.select_related("delivery")
        .filter(public_id=public_id, api_key__application=api_key.application)
        .first()
    )


def message_for_unsubscribe_token(token: str) -> TransactionalMessage | None:
    """The marketing message a List-Unsubscribe token was made for, or None (forged, other
    purpose, or not a marketing message)."""
    value = read_token(UNSUBSCRIBE_TOKEN_PURPOSE, token)
    if value is None or not 0 <= value < 1 << 128:
        return None
    return (
        TransactionalMessage.objects.select_related("delivery")
        .filter(public_id=uuid.UUID(int=value), category=Category.MARKETING)
        .first()
    )


def message_bounce_reports(message: TransactionalMessage) -> list[BounceMessage]:
    """The bounce reports tied to a message's delivery, newest first."""
    return list(
        BounceMessage.objects.filter(delivery_id=message.delivery_id).order_by("-received_at")[:50]
    )


def message_status(message: TransactionalMessage) -> dict[str, Any]:
    delivery = message.delivery
    return {
        "id": str(message.public_id),
        "status": delivery.status,
        "category": message.category,
        "to": delivery.email,
        "from_email": message.from_email,
        "subject": message.subject,
        "tags": message.tags,
        "message_id": delivery.message_id,
        "attempts": delivery.attempts,
        "smtp_code": delivery.smtp_code,
        "enhanced_status": delivery.enhanced_status,
        "smtp_reply": delivery.smtp_reply,
        "reason": delivery.reason,
        "created_at": message.created_at.isoformat(),
        "sent_at": delivery.sent_at.isoformat() if delivery.sent_at else None,
        "next_attempt_at": (
            delivery.next_attempt_at.isoformat() if delivery.next_attempt_at else None
        ),
    }


def message_events(message: TransactionalMessage) -> list[dict[str, Any]]:
    """The delivery's events, oldest first (a message's history is its delivery's)."""
    return [
        {
            "kind": event.kind,
            "at": event.created_at.isoformat(),
            "smtp_code": event.smtp_code,
            "enhanced_status": event.enhanced_status,
            "detail": event.detail,
        }
        for event in message.delivery.events.all()
    ]
