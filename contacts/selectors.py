"""Read queries for contacts, lists and suppressions."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from django.db.models import Count, Q, QuerySet
from django.db.models.functions import Lower

from contacts.models import (
    Contact,
    ContactList,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionScope,
)


def parent_domains(domain: str) -> list[str]:
    """The domain and its parents, without the top-level label (a.b.example -> b.example)."""
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)] or [domain]


def suppression_check(emails: Iterable[str]) -> set[str]:
    """The subset of ``emails`` (as given) that is suppressed, by address or by domain.

    Addresses compare case-insensitively; a suppressed domain also covers its subdomains.
    """
    by_key: dict[str, list[str]] = {}
    domains: set[str] = set()
    for email in emails:
        key = email.lower()
        by_key.setdefault(key, []).append(email)
        domains.update(parent_domains(key.rpartition("@")[2]))
    if not by_key:
        return set()
    hits = Suppression.objects.filter(
        Q(scope=SuppressionScope.ADDRESS, value__in=list(by_key))
        | Q(scope=SuppressionScope.DOMAIN, value__in=list(domains))
    ).values_list("scope", "value")
    suppressed_keys: set[str] = set()
    suppressed_domains: set[str] = set()
    for scope, value in hits:
        (suppressed_keys if scope == SuppressionScope.ADDRESS else suppressed_domains).add(value)
    result: set[str] = set()
    for key, originals in by_key.items():
        domain = key.rpartition("@")[2]
        if key in suppressed_keys or (
            suppressed_domains and any(d in suppressed_domains for d in parent_domains(domain))
        ):
            result.update(originals)
    return result


def contacts_by_keys(keys: Iterable[str]) -> QuerySet[Contact]:
    """Contacts whose lower-cased email is in ``keys`` (uses the lower(email) unique index)."""
    return Contact.objects.annotate(email_key=Lower("email")).filter(email_key__in=list(keys))


def contact_lists_with_counts() -> QuerySet[ContactList]:
    """Lists annotated with ``subscribed_count`` and ``total_count``."""
    return ContactList.objects.annotate(
        total_count=Count("subscriptions", distinct=True),
        subscribed_count=Count(
            "subscriptions",
            filter=Q(subscriptions__status=SubscriptionStatus.SUBSCRIBED),
            distinct=True,
        ),
    )


def contacts_export_rows(*, contact_list: ContactList, chunk_size: int = 2000) -> Iterator[dict]:
    """Every contact on the list with its subscription status, streamed in id order."""
    subscriptions = (
        Subscription.objects.filter(contact_list=contact_list)
        .select_related("contact")
        .order_by("contact_id")
    )
    for subscription in subscriptions.iterator(chunk_size=chunk_size):
        contact = subscription.contact
        yield {
            "email": contact.email,
            "name": contact.name,
            "status": contact.status,
            "subscription": subscription.status,
            "attributes": contact.attributes or {},
            "created_at": contact.created_at,
        }


def contact_attribute_keys(*, list_ids: Iterable[int], sample: int = 500) -> list[str]:
    """The attribute names the subscribed contacts of these lists have (no list: any contact),
    read from the newest few hundred, most common first: what a template can personalize with."""
    ids = [int(i) for i in list_ids][:100]
    contacts = Contact.objects.all()
    if ids:
        contacts = contacts.filter(
            subscriptions__contact_list_id__in=ids,
            subscriptions__status=SubscriptionStatus.SUBSCRIBED,
        )
    attributes = contacts.order_by("-id").values_list("attributes", flat=True)[:sample]
    counts: dict[str, int] = {}
    for value in attributes:
        if isinstance(value, dict):
            for key in value:
                if isinstance(key, str) and key.isidentifier() and len(key) <= 64:
                    counts[key] = counts.get(key, 0) + 1
    return sorted(counts, key=lambda key: (-counts[key], key))[:200]
