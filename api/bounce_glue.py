"""What the bounce intake (delivery.intake.ingest) needs from the API app: find and record messages.

Registered in ApiConfig.ready as an intake.MessageCorrelator, so reports about transactional
messages go through the same keys, trust rules and policy table as campaigns' while the
dependency stays api -> delivery (as with relay_glue).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from api import correlation, selectors, services
from api.models import Category, TransactionalMessage
from contacts.selectors import contacts_by_keys
from delivery.intake.ingest import SentMessage
from delivery.intake.mailto import Unsubscribed
from delivery.tokens import unsubscribe_token_parse


def _sent(message: TransactionalMessage | None) -> SentMessage | None:
    if message is None:
        return None
    contact_id = contacts_by_keys([message.to_email.lower()]).values_list("pk", flat=True).first()
    return SentMessage(
        ref=correlation.correlation_key(message.public_id),
        email=message.to_email,
        contact_id=contact_id,
    )


class TransactionalCorrelator:
    """Transactional messages, by their return path and their "tx-<public id>" key."""

    def by_return_path(self, address: str) -> SentMessage | None:
        return _sent(selectors.message_by_return_path(address))

    def by_key(self, key: str) -> SentMessage | None:
        return _sent(selectors.message_by_signed_key(key))

    def record(
        self,
        message: SentMessage,
        *,
        event: str,
        status: str | None,
        reason: str,
        smtp_code: int | None,
        enhanced_status: str,
        detail: str,
        now: datetime,
    ) -> None:
        found = selectors.message_by_correlation_key(message.ref)
        if found is None:  # deleted meanwhile: the report stays on the bounce message
            return
        services.message_report_record(
            message_pk=found.pk,
            event=event,
            status=status,
            reason=reason,
            smtp_code=smtp_code,
            enhanced_status=enhanced_status,
            detail=detail,
            now=now,
        )


class TransactionalUnsubscribeHandler:
    """Mail to a marketing message's List-Unsubscribe mailto (delivery.intake.mailto)."""

    def unsubscribe(self, token: str, *, source: str) -> Unsubscribed | None:
        value = unsubscribe_token_parse(token, purpose=correlation.UNSUBSCRIBE_MAILTO_PURPOSE)
        if value is None or value >= 1 << 128:
            return None
        message = TransactionalMessage.objects.filter(
            public_id=uuid.UUID(int=value), category=Category.MARKETING
        ).first()
        if message is None:
            return None
        changed = services.message_unsubscribe(message=message, source=source)
        sent = _sent(message)
        return Unsubscribed(
            delivery_id=None,
            message_ref=sent.ref,
            email=sent.email,
            contact_id=sent.contact_id,
            changed=changed,
        )
