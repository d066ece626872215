"""Contacts over REST (upsert, unsubscribe) and the opt-out of a marketing message's recipient."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from django.db import transaction
from django.utils import timezone

from api.errors import MessageRejected
from api.models import MessageEvent, MessageEventKind, TransactionalMessage
from contacts.models import (
    Contact,
    SuppressionReason,
)
from contacts.selectors import contacts_by_keys
from contacts.suppression import address_suppress, contacts_unsubscribed

logger = logging.getLogger(__name__)

# The contacts app has no single-contact write service yet (imports are set-based), so the
# API's are here; they only write through the contacts models' own constraints.


def contacts_by_address(email: str):
    """Contacts with this address in any case, through the lower(email) unique index."""
    return contacts_by_keys([email.lower()])


def contact_upsert(
    *,
    email: str,
    name: str | None = None,
    attributes: Mapping[str, object] | None = None,
    lists: Sequence[str] = (),
    source: str = "api",
) -> tuple[Contact, bool]:
    """Create or update a contact by address and subscribe it to ``lists`` (created if new).

    Attributes are merged; a contact that unsubscribed, bounced or complained stays so: a
    subscription through the API never resurrects it.
    """
    from contacts.models import ContactList, Subscription, SubscriptionStatus
    from contacts.normalize import InvalidEmail, normalize_email

    try:
        normalized = normalize_email(email)
    except InvalidEmail as exc:
        raise MessageRejected(f"invalid email: {exc.detail}") from None
    with transaction.atomic():
        contact = contacts_by_address(normalized).select_for_update().first()
        created = contact is None
        if contact is None:
            contact = Contact.objects.create(
                email=normalized, name=name or "", attributes=dict(attributes or {})
            )
        else:
            changed = []
            if name is not None and name != contact.name:
                contact.name = name
                changed.append("name")
            if attributes:
                contact.attributes = {**contact.attributes, **attributes}
                changed.append("attributes")
            if changed:
                contact.save(update_fields=[*changed, "updated_at"])
        for list_name in lists:
            contact_list, _ = ContactList.objects.get_or_create(name=list_name)
            subscription, new = Subscription.objects.get_or_create(
                contact=contact,
                contact_list=contact_list,
                defaults={"status": SubscriptionStatus.SUBSCRIBED, "source": source[:100]},
            )
            if not new and subscription.status == SubscriptionStatus.UNCONFIRMED:
                subscription.status = SubscriptionStatus.SUBSCRIBED
                subscription.save(update_fields=["status", "updated_at"])
    return contact, created


def contact_unsubscribe(*, email: str, lists: Sequence[str] = (), source: str = "api") -> int:
    """Unsubscribe from ``lists``, or from everything (contact status + suppression) when
    none is named; returns how many subscriptions changed, each with a consent record.
    Idempotent."""
    from contacts.models import Subscription
    from contacts.signup import subscriptions_unsubscribe

    contact = contacts_by_address(email.strip()).first()
    if contact is None:
        raise MessageRejected("no such contact")
    with transaction.atomic():
        if not lists:
            changed, _ = _unsubscribe_everywhere(email=contact.email, source=source)
            return changed
        return subscriptions_unsubscribe(
            Subscription.objects.filter(contact=contact, contact_list__name__in=list(lists)),
            source=source,
        )


def _unsubscribe_everywhere(
    *, email: str, source: str, ip: str = "", user_agent: str = ""
) -> tuple[int, bool]:
    """Stop all marketing mail to an address, with or without a contact; idempotent.

    Every subscription of its contact ends (with a consent record, as campaigns' unsubscribe
    link writes), the contact becomes unsubscribed, and an address suppression with reason
    `unsubscribe` is kept: campaigns exclude it and `suppression_reason` refuses marketing
    messages for it, while transactional mail still goes. Returns (subscriptions ended,
    whether anything changed). Runs inside the caller's transaction.
    """
    from contacts.models import Subscription
    from contacts.signup import subscriptions_unsubscribe

    contacts = list(contacts_by_address(email).values_list("pk", flat=True))
    changed = subscriptions_unsubscribe(
        Subscription.objects.filter(contact_id__in=contacts),
        source=source,
        ip=ip,
        user_agent=user_agent,
    )
    contact_changed = contacts_unsubscribed(contact_ids=contacts)
    suppressed = address_suppress(email=email, reason=SuppressionReason.UNSUBSCRIBE, source=source)
    return changed, bool(changed or contact_changed or suppressed)


def message_unsubscribe(
    *, message: TransactionalMessage, source: str, ip: str = "", user_agent: str = ""
) -> bool:
    """The recipient of a marketing message opted out (its List-Unsubscribe link); idempotent.

    A transactional message names no list, so the opt-out covers all marketing mail to the
    address (`_unsubscribe_everywhere`), and the message's history gets an `unsubscribe`
    event. Returns True when something changed.
    """
    now = timezone.now()
    with transaction.atomic():
        _, changed = _unsubscribe_everywhere(
            email=message.to_email,
            source=f"message {message.public_id}: {source}"[:100],
            ip=ip,
            user_agent=user_agent,
        )
        if changed:
            MessageEvent.objects.create(
                message=message, kind=MessageEventKind.UNSUBSCRIBE, created_at=now, detail=source
            )
    if changed:
        logger.info("message %s: recipient unsubscribed (%s)", message.public_id, source)
    return changed
