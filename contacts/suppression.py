"""Suppressions and contact status after a bounce, complaint or opt-out: the one writer.

Every road that condemns an address (a synchronous 5xx of a campaign or a transactional send,
an asynchronous report, a complaint, an unsubscribe) calls these functions; what each road
does is decided by the bounce policy (delivery.intake.policy) or by the person's own opt-out.
The admin's manual additions and imports use contacts.services and contacts.imports.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from django.utils import timezone

from contacts.models import (
    Contact,
    ContactStatus,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
    SuppressionScope,
)
from contacts.selectors import contacts_by_keys
from contacts.signup import subscriptions_unsubscribe


def addresses_suppress(*, emails: Iterable[str], reason: str, source: str) -> None:
    """Suppress each address (lower-cased; one already suppressed keeps its first reason)."""
    values = dict.fromkeys(email.lower() for email in emails if email)
    Suppression.objects.bulk_create(
        [
            Suppression(
                value=value, scope=SuppressionScope.ADDRESS, reason=reason, source=source[:200]
            )
            for value in values
        ],
        ignore_conflicts=True,
    )


def address_suppress(*, email: str, reason: str, source: str) -> bool:
    """Suppress one address; True when it was not suppressed before."""
    _, created = Suppression.objects.get_or_create(
        value=email.lower(),
        scope=SuppressionScope.ADDRESS,
        defaults={"reason": reason, "source": source[:200]},
    )
    return created


def contacts_bounced(*, contact_ids: Sequence[int], now: datetime | None = None) -> int:
    """Active contacts whose address is dead become bounced; how many changed."""
    return Contact.objects.filter(pk__in=contact_ids, status=ContactStatus.ACTIVE).update(
        status=ContactStatus.BOUNCED, updated_at=now or timezone.now()
    )


def contacts_complained(*, contact_ids: Sequence[int], now: datetime | None = None) -> int:
    """A complaint outranks every other status but itself; how many changed."""
    return Contact.objects.filter(
        pk__in=contact_ids,
        status__in=[ContactStatus.ACTIVE, ContactStatus.UNSUBSCRIBED, ContactStatus.BOUNCED],
    ).update(status=ContactStatus.COMPLAINED, updated_at=now or timezone.now())


def contacts_unsubscribed(*, contact_ids: Sequence[int], now: datetime | None = None) -> int:
    """Active contacts opt out of all campaign mail; how many changed."""
    return Contact.objects.filter(pk__in=contact_ids, status=ContactStatus.ACTIVE).update(
        status=ContactStatus.UNSUBSCRIBED, updated_at=now or timezone.now()
    )


def subscriptions_end(*, contact_ids: Sequence[int], now: datetime | None = None) -> int:
    """End every subscription of these contacts (the bounce policy's "unsubscribe" action;
    an opt-out by the person goes through contacts.signup, which keeps a consent record)."""
    return (
        Subscription.objects.filter(contact_id__in=contact_ids)
        .exclude(status=SubscriptionStatus.UNSUBSCRIBED)
        .update(status=SubscriptionStatus.UNSUBSCRIBED, updated_at=now or timezone.now())
    )


def address_unsubscribe_everywhere(
    *, email: str, source: str, ip: str = "", user_agent: str = ""
) -> tuple[int, bool]:
    """Stop all marketing mail to an address, with or without a contact; idempotent.

    Every subscription of its contact ends (with a consent record, as campaigns' unsubscribe
    link writes), the contact becomes unsubscribed, and an address suppression with reason
    `unsubscribe` is kept: campaigns exclude it and marketing messages of the API are refused
    for it, while transactional mail still goes. Returns (subscriptions ended, whether
    anything changed). Runs inside the caller's transaction.
    """
    contacts = list(contacts_by_keys([email.lower()]).values_list("pk", flat=True))
    changed = subscriptions_unsubscribe(
        Subscription.objects.filter(contact_id__in=contacts),
        source=source,
        ip=ip,
        user_agent=user_agent,
    )
    contact_changed = contacts_unsubscribed(contact_ids=contacts)
    suppressed = address_suppress(email=email, reason=SuppressionReason.UNSUBSCRIBE, source=source)
    return changed, bool(changed or contact_changed or suppressed)
