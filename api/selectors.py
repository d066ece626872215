"""Reads of the API app: messages and their events as the API shows them."""

from __future__ import annotations

import uuid
from typing import Any

from api.models import ApiKey, TransactionalMessage


def message_for_key(*, api_key: ApiKey, public_id: uuid.UUID | str) -> TransactionalMessage | None:
    """A message sent by any key of the same application, or None."""
    try:
        public_id = uuid.UUID(str(public_id))
    except ValueError:
        return None
    return TransactionalMessage.objects.filter(
        public_id=public_id, api_key__application=api_key.application
    ).first()


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
