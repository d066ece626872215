"""Contacts over REST (upsert, unsubscribe) and the opt-out of a marketing message's recipient."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from django.db import transaction

from api.errors import MessageRejected
from api.models import TransactionalMessage
from campaigns.services import delivery_unsubscribe
from contacts.models import (
    Contact,
)
from contacts.selectors import contacts_by_keys
from contacts.suppression import address_unsubscribe_everywhere

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
            changed, _ = address_unsubscribe_everywhere(email=contact.email, source=source)
            return changed
        return subscriptions_unsubscribe(
            Subscription.objects.filter(contact=contact, contact_list__name__in=list(lists)),
            source=source,
        )


def message_unsubscribe(
    *, message: TransactionalMessage, source: str, ip: str = "", user_agent: str = ""
) -> bool:
    """The recipient of a marketing message opted out (its List-Unsubscribe link); idempotent.

    A transactional message names no list, so the opt-out covers all marketing mail to the
    address, and the message's delivery gets an `unsubscribe` event: what any delivery
    without a campaign gets (campaigns.services.delivery_unsubscribe, which mail to the
    List-Unsubscribe address reaches too). Returns True when something changed.
    """
    changed = delivery_unsubscribe(
        delivery_id=message.delivery_id, source=source, ip=ip, user_agent=user_agent
    )
    if changed:
        logger.info("message %s: recipient unsubscribed (%s)", message.public_id, source)
    return changed
