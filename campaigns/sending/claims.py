"""Claims and leases of a campaign's deliveries: materialize, lease a range, read it a chunk
at a time, claim row by row, renew, end, reclaim, release, cancel.

The send engine owns these decisions; the delivery app keeps the records (Delivery,
DeliveryLease) and their outcome writes (delivery.recording).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.utils import timezone

from campaigns.models import Campaign, CampaignStatus
from contacts.models import (
    Contact,
    ContactStatus,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionScope,
)
from delivery import selectors
from delivery.journal import journal_replay
from delivery.models import (
    OPEN_STATUSES,
    Delivery,
    DeliveryEvent,
    DeliveryLease,
    DeliveryStatus,
    EventKind,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    id: int
    contact_id: int
    email: str
    name: str
    attributes: dict
    attempts: int
    first_attempt_at: datetime | None
    # Known when the claim could tell (PostgreSQL): the contact is active, subscribed to one
    # of the lists the claimer asked about, and the address or its domain is suppressed.
    # None: not looked at.
    active: bool | None = None
    subscribed: bool | None = None
    suppressed: bool | None = None


# A ClaimedDelivery's fields, in order, read through the ORM (SQLite).
_CLAIMED_FIELDS = (
    "id",
    "contact_id",
    "email",
    "contact__name",
    "contact__attributes",
    "attempts",
    "first_attempt_at",
)


def deliveries_materialize(
    *,
    campaign_id: int,
    list_ids: Sequence[int],
    segment_querysets: Sequence[QuerySet] = (),
    contact_ids: tuple[int, int] | None = None,
) -> int:
    """Create one pending delivery per eligible recipient of the lists and segments; re-runnable.

    Set-based (one INSERT ... SELECT): the recipients are the union of the lists' subscribed
    members and the segments' contacts (a segment's own rules decide on list membership), each
    address once; unsubscribed, bounced and suppressed (address or domain) contacts are
    excluded, and rows that already exist are left alone (ON CONFLICT DO NOTHING), so a re-run
    adds only the missing. ``segment_querysets`` are querysets of contacts, compiled into
    ``c.id IN (<subquery>)``. ``contact_ids`` (low, high) limits it to that range of contact
    ids, both included, so a large campaign can be materialized (and start) a chunk at a time.
    """
    if not list_ids and not segment_querysets:
        return 0
    delivery = Delivery._meta.db_table
    contact = Contact._meta.db_table
    subscription = Subscription._meta.db_table
    suppression = Suppression._meta.db_table
    domain_of = (
        "split_part(c.email, '@', 2)"
        if connection.vendor == "postgresql"
        else "substr(c.email, instr(c.email, '@') + 1)"
    )
    targets: list[str] = []
    target_params: list = []
    if list_ids:
        placeholders = ", ".join(["%s"] * len(list_ids))
        targets.append(
            f"""EXISTS (SELECT 1 FROM {subscription} s
                        WHERE s.contact_id = c.id AND s.status = %s
                          AND s.contact_list_id IN ({placeholders}))"""
        )
        target_params += [SubscriptionStatus.SUBSCRIBED, *list_ids]
    for queryset in segment_querysets:
        sub_sql, sub_params = queryset.values("id").query.sql_with_params()
        targets.append(f"c.id IN ({sub_sql})")
        target_params += list(sub_params)
    sql = f"""
        INSERT INTO {delivery} (campaign_id, contact_id, email, status, attempts, message_id,
                                smtp_code, enhanced_status, smtp_reply, reason, updated_at)
        SELECT %s, c.id, c.email, %s, 0, '', NULL, '', '', '', %s
        FROM {contact} c
        WHERE c.status = %s{" AND c.id BETWEEN %s AND %s" if contact_ids else ""}
          AND ({" OR ".join(targets)})
          AND NOT EXISTS (SELECT 1 FROM {suppression} x
                          WHERE (x.scope = %s AND x.value = lower(c.email))
                             OR (x.scope = %s AND x.value = lower({domain_of})))
        ORDER BY c.id
        ON CONFLICT (campaign_id, contact_id) DO NOTHING
    """  # noqa: S608 - table names come from model metadata, values are parameters
    params = [
        campaign_id,
        DeliveryStatus.PENDING,
        timezone.now(),
        ContactStatus.ACTIVE,
        *(contact_ids or ()),
        *target_params,
        SuppressionScope.ADDRESS,
        SuppressionScope.DOMAIN,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return max(cursor.rowcount, 0)


def deliveries_claim(
    *,
    campaign_id: int,
    limit: int,
    id_from: int | None = None,
    id_to: int | None = None,
    lease_seconds: int | None = None,
    list_ids: Sequence[int] | None = None,
    only_if_sending: bool = False,
) -> list[ClaimedDelivery]:
    """Claim up to `limit` due deliveries (pending, or deferred and due) with a lease each.

    The per-row claim of the open-ended tasks (the sweeper's retries, a resumed campaign's
    stragglers): a ranged batch task leases its whole range instead (deliveries_lease).
    Rows inside a leased range are never taken here. On PostgreSQL concurrent claimers
    skip each other's locked rows, and one statement
    claims, returns the contacts' fields and tells whether each contact is active, whether
    its address or domain is suppressed and (with ``list_ids``) whether it is still
    subscribed to one of those lists. On SQLite the IMMEDIATE transaction serializes
    claimers. Either way each row goes to one claimer; rows come in id order.
    ``only_if_sending``: claim nothing unless the campaign is sending (paused or cancelled
    meanwhile).
    """
    now = timezone.now()
    lease = now + timedelta(seconds=lease_seconds or settings.EDM_LEASE_SECONDS)
    if connection.vendor == "postgresql":
        return _claim_postgresql(
            campaign_id, limit, id_from, id_to, now, lease, list_ids, only_if_sending
        )
    due = Delivery.objects.filter(selectors.due_deliveries(now), campaign_id=campaign_id).exclude(
        Exists(
            DeliveryLease.objects.filter(
                campaign_id=OuterRef("campaign_id"),
                id_from__lte=OuterRef("id"),
                id_to__gte=OuterRef("id"),
            )
        )
    )
    if only_if_sending:
        due = due.filter(
            Exists(Campaign.objects.filter(pk=campaign_id, status=CampaignStatus.SENDING))
        )
    if id_from is not None:
        due = due.filter(id__gte=id_from)
    if id_to is not None:
        due = due.filter(id__lte=id_to)
    with transaction.atomic():
        locking = due.order_by("id")
        if connection.features.has_select_for_update_skip_locked:
            locking = locking.select_for_update(skip_locked=True, of=("self",))
        ids = list(locking.values_list("id", flat=True)[:limit])
        if not ids:
            return []
        Delivery.objects.filter(id__in=ids).update(
            status=DeliveryStatus.SENDING, lease_expires_at=lease, updated_at=now
        )
    rows = Delivery.objects.filter(id__in=ids).order_by("id").values_list(*_CLAIMED_FIELDS)
    return [ClaimedDelivery(*row) for row in rows]


def _claim_postgresql(
    campaign_id: int,
    limit: int,
    id_from: int | None,
    id_to: int | None,
    now: datetime,
    lease: datetime,
    list_ids: Sequence[int] | None,
    only_if_sending: bool,
) -> list[ClaimedDelivery]:
    """The claim as one statement: 1 round trip instead of 3 (pick, update, read back) plus
    the campaign-status, contact-status, suppression and subscription look-ups, each with a
    parameter list of a whole chunk."""
    table = Delivery._meta.db_table
    bounds = ""
    params: dict[str, Any] = {
        "campaign": campaign_id,
        "pending": DeliveryStatus.PENDING.value,
        "deferred": DeliveryStatus.DEFERRED.value,
        "sending": DeliveryStatus.SENDING.value,
        "now": now,
        "lease": lease,
        "limit": limit,
        "campaign_sending": CampaignStatus.SENDING.value,
        **_flag_params(list_ids),
    }
    if only_if_sending:
        bounds += (
            f" AND EXISTS (SELECT FROM {Campaign._meta.db_table} WHERE id = %(campaign)s"
            " AND status = %(campaign_sending)s)"
        )
    if id_from is not None:
        bounds += " AND id >= %(id_from)s"
        params["id_from"] = id_from
    if id_to is not None:
        bounds += " AND id <= %(id_to)s"
        params["id_to"] = id_to
    with transaction.atomic(), connection.cursor() as cursor:
        _lock_campaign_claims(campaign_id)
        cursor.execute(
            f"""
            WITH picked AS (
                SELECT id FROM {table} AS p
                WHERE campaign_id = %(campaign)s
                  AND (status = %(pending)s
                       OR (status = %(deferred)s AND next_attempt_at <= %(now)s)){bounds}
                  AND NOT EXISTS (SELECT FROM {DeliveryLease._meta.db_table} AS l
                                  WHERE l.campaign_id = %(campaign)s
                                    AND l.id_from <= p.id AND l.id_to >= p.id)
                ORDER BY id
                LIMIT %(limit)s
                FOR UPDATE SKIP LOCKED
            )
            UPDATE {table} AS d
            SET status = %(sending)s, lease_expires_at = %(lease)s, updated_at = %(now)s
            FROM picked, {Contact._meta.db_table} AS c
            WHERE d.id = picked.id AND c.id = d.contact_id
            RETURNING d.id, d.contact_id, d.email, c.name, c.attributes, d.attempts,
                d.first_attempt_at, {_flag_columns(list_ids)}
            """,  # noqa: S608 - table names from model metadata
            params,
        )
        rows = cursor.fetchall()
    rows.sort()  # RETURNING follows no order; messages go out in id order
    return _claimed(rows)


def _claimed(rows: list[tuple]) -> list[ClaimedDelivery]:
    loads = json.loads  # Django has psycopg hand jsonb over as text
    return [
        ClaimedDelivery(i, contact, email, name, loads(attributes), *rest)
        for i, contact, email, name, attributes, *rest in rows
    ]


# Advisory locks taken per campaign by whoever takes rows for sending (a range lease, a
# per-row claim), namespaced by this number ("Sky").
_CLAIM_LOCK = 0x536B79


def _lock_campaign_claims(campaign_id: int) -> None:
    """Serialize, within one campaign, taking a range lease with the per-row claims: a claim
    either committed before the lease (its rows are no longer pending when the lease's task
    reads them) or sees the lease (and leaves its rows alone). SQLite's IMMEDIATE
    transactions serialize every writer already."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)", [_CLAIM_LOCK, campaign_id % 2**31]
            )


def deliveries_lease(
    *,
    campaign_id: int,
    id_from: int,
    id_to: int,
    holder: str,
    lease_seconds: int | None = None,
) -> DeliveryLease | None:
    """Lease a range of a sending campaign's deliveries (ids ``id_from``..``id_to``) to one
    task: its rows are then read with deliveries_read, with no write per row.

    None when the campaign is not sending, or when another task's lease covers part of the
    range (that task sends those rows; if it died, the sweeper takes its lease back when it
    expires). A lease of the same ``holder`` (the same task, delivered again after its
    worker died) or an expired one is taken back at once, as the sweeper would.
    """
    now = timezone.now()
    expires = now + timedelta(seconds=lease_seconds or settings.EDM_LEASE_SECONDS)
    with transaction.atomic():
        _lock_campaign_claims(campaign_id)
        if not Campaign.objects.filter(pk=campaign_id, status=CampaignStatus.SENDING).exists():
            return None
        overlapping = DeliveryLease.objects.select_for_update().filter(
            campaign_id=campaign_id, id_from__lte=id_to, id_to__gte=id_from
        )
        suspects: list[int] = []
        for lease in overlapping:
            if lease.holder != holder and lease.expires_at >= now:
                return None
            suspects += _reclaim_lease(lease, now)
        lease = DeliveryLease.objects.create(
            campaign_id=campaign_id, id_from=id_from, id_to=id_to, holder=holder, expires_at=expires
        )
        lease.suspects_to = max((i for i in suspects if id_from <= i <= id_to), default=None)
        return lease


def deliveries_read(
    *,
    lease: DeliveryLease,
    after: int,
    limit: int,
    list_ids: Sequence[int] | None = None,
) -> list[ClaimedDelivery]:
    """The next due deliveries (pending, or deferred and due) of a leased range with an id
    above ``after``, up to ``limit``, in id order; the lease records how far it has read.

    Nothing once the lease is gone (it expired and was taken back) or the campaign stopped
    sending. The rows are not written: they stay pending under the lease. On PostgreSQL one
    statement also tells, as deliveries_claim does, whether each contact is active,
    subscribed to one of ``list_ids`` and suppressed.
    """
    now = timezone.now()
    if connection.vendor == "postgresql":
        return _read_postgresql(lease, after, limit, now, list_ids)
    with transaction.atomic():
        live = DeliveryLease.objects.filter(pk=lease.pk).exists()
        sending = Campaign.objects.filter(
            pk=lease.campaign_id, status=CampaignStatus.SENDING
        ).exists()
        if not (live and sending):
            return []
        rows = list(
            Delivery.objects.filter(
                selectors.due_deliveries(now),
                campaign_id=lease.campaign_id,
                id__gt=after,
                id__lte=lease.id_to,
            )
            .order_by("id")
            .values_list(*_CLAIMED_FIELDS)[:limit]
        )
        if rows:
            DeliveryLease.objects.filter(pk=lease.pk).update(read_to=rows[-1][0])
    return [ClaimedDelivery(*row) for row in rows]


def _read_postgresql(
    lease: DeliveryLease,
    after: int,
    limit: int,
    now: datetime,
    list_ids: Sequence[int] | None,
) -> list[ClaimedDelivery]:
    params: dict[str, Any] = {
        "campaign": lease.campaign_id,
        "lease": lease.pk,
        "after": after,
        "id_to": lease.id_to,
        "limit": limit,
        "now": now,
        "pending": DeliveryStatus.PENDING.value,
        "deferred": DeliveryStatus.DEFERRED.value,
        "campaign_sending": CampaignStatus.SENDING.value,
        **_flag_params(list_ids),
    }
    leases = DeliveryLease._meta.db_table
    # The lease's UPDATE returns its row only if the lease still exists when the statement
    # gets to it (a sweeper that took it back meanwhile has deleted it): no rows then.
    sql = f"""
        WITH picked AS (
            SELECT id, contact_id, email, attempts, first_attempt_at
            FROM {Delivery._meta.db_table}
            WHERE campaign_id = %(campaign)s AND id > %(after)s AND id <= %(id_to)s
              AND (status = %(pending)s
                   OR (status = %(deferred)s AND next_attempt_at <= %(now)s))
              AND EXISTS (SELECT FROM {Campaign._meta.db_table} WHERE id = %(campaign)s
                          AND status = %(campaign_sending)s)
            ORDER BY id
            LIMIT %(limit)s
        ), marked AS (
            UPDATE {leases} SET read_to = (SELECT max(id) FROM picked)
            WHERE id = %(lease)s AND EXISTS (SELECT FROM picked)
            RETURNING id
        )
        SELECT d.id, d.contact_id, d.email, c.name, c.attributes, d.attempts,
            d.first_attempt_at, {_flag_columns(list_ids)}
        FROM picked AS d JOIN {Contact._meta.db_table} AS c ON c.id = d.contact_id
        WHERE EXISTS (SELECT FROM marked)
        ORDER BY d.id
    """  # noqa: S608 - table names from model metadata
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return _claimed(cursor.fetchall())


def _flag_params(list_ids: Sequence[int] | None) -> dict[str, Any]:
    return {
        "active": ContactStatus.ACTIVE.value,
        "subscribed": SubscriptionStatus.SUBSCRIBED.value,
        "lists": list(list_ids or ()),
        "address": SuppressionScope.ADDRESS.value,
        "domain": SuppressionScope.DOMAIN.value,
    }


def _flag_columns(list_ids: Sequence[int] | None) -> str:
    """The claimed rows' flags, for a query with deliveries as ``d`` and contacts as ``c``:
    the contact is active; subscribed to one of the lists (NULL without lists); its address
    or domain suppressed.

    Subscriptions are looked up by contact (the unique (contact, list) index). The list is
    compared as `contact_list_id + 0` so that it can never lead the lookup: on statistics
    older than a large import the planner took the (list, status) index and read the whole
    list for each claimed row (28 ms a row on a 200,000-contact list).
    """
    subscribed = (
        f"""EXISTS (SELECT FROM {Subscription._meta.db_table} AS s
            WHERE s.contact_id = d.contact_id AND s.contact_list_id + 0 = ANY(%(lists)s)
              AND s.status = %(subscribed)s)"""
        if list_ids is not None
        else "NULL"
    )
    return f"""c.status = %(active)s, {subscribed},
        EXISTS (SELECT FROM {Suppression._meta.db_table} AS x
                WHERE (x.value = lower(d.email) AND x.scope = %(address)s)
                   OR (x.value = lower(split_part(d.email, '@', 2)) AND x.scope = %(domain)s))
    """  # noqa: S608 - table names from model metadata


def deliveries_lease_renew(lease: DeliveryLease, *, lease_seconds: int | None = None) -> bool:
    """Extend a live task's lease; False when it is gone (expired and taken back)."""
    expires = timezone.now() + timedelta(seconds=lease_seconds or settings.EDM_LEASE_SECONDS)
    return bool(DeliveryLease.objects.filter(pk=lease.pk).update(expires_at=expires))


def deliveries_lease_end(lease: DeliveryLease) -> None:
    """End a task's lease (its outcomes written): the rows it did not send are pending."""
    DeliveryLease.objects.filter(pk=lease.pk).delete()


def _reclaim_lease(lease: DeliveryLease, now: datetime) -> list[int]:
    """Take back a dead task's lease: the rows it had read and that are still open may have
    left, so they come back as a reclaim (the attempt counted, due now); the rest of its
    range is pending and is simply read again. Returns the ids of the rows reclaimed."""
    rows: list[tuple[int, int]] = []
    if lease.read_to is not None:
        read = Delivery.objects.filter(
            selectors.due_deliveries(now),
            campaign_id=lease.campaign_id,
            id__gte=lease.id_from,
            id__lte=min(lease.read_to, lease.id_to),
        )
        # Locked, like the per-row reclaim: a stalled holder's flush either committed
        # before (its rows are no longer due and are left alone) or waits for this and
        # then records what happened.
        locked = read.select_for_update() if connection.vendor == "postgresql" else read
        rows = list(locked.order_by("id").values_list("id", "attempts"))
        reclaimed = _reclaim_rows(rows, now)
    else:
        reclaimed = []
    lease.delete()
    return reclaimed


def _blocked(claimed: list[ClaimedDelivery]) -> tuple[set[int], set[str]]:
    """The claimed ids already known to be suppressed, and the suppressed addresses and
    domains among the claimed ones (read when the claim did not look)."""
    if all(c.suppressed is not None for c in claimed):  # the claim looked already
        return {c.id for c in claimed if c.suppressed}, set()
    emails = {c.email.lower() for c in claimed}
    domains = {e.rpartition("@")[2] for e in emails}
    values = Suppression.objects.filter(
        Q(scope=SuppressionScope.ADDRESS, value__in=emails)
        | Q(scope=SuppressionScope.DOMAIN, value__in=domains)
    ).values_list("value", flat=True)
    return set(), set(values)


def _inactive(claimed: list[ClaimedDelivery]) -> set[int]:
    """The claimed contacts no longer active (read when the claim did not look)."""
    if all(c.active is not None for c in claimed):  # the claim looked already
        return {c.contact_id for c in claimed if not c.active}
    return set(
        Contact.objects.filter(id__in=[c.contact_id for c in claimed])
        .exclude(status=ContactStatus.ACTIVE)
        .values_list("id", flat=True)
    )


def _deliveries_mark_suppressed(ids: list[int]) -> None:
    now = timezone.now()
    with transaction.atomic():
        Delivery.objects.filter(id__in=ids, status__in=OPEN_STATUSES).update(
            status=DeliveryStatus.SUPPRESSED,
            reason="suppressed",
            lease_expires_at=None,
            updated_at=now,
        )
        DeliveryEvent.objects.bulk_create(
            DeliveryEvent(delivery_id=i, kind=EventKind.SUPPRESSED, created_at=now) for i in ids
        )


def deliveries_drop_suppressed(
    claimed: list[ClaimedDelivery], *, targeted: set[int] | None = None
) -> list[ClaimedDelivery]:
    """Mark claimed deliveries whose address was suppressed or opted out since dispatch.

    Checked again at send time so that a late opt-out is honoured. `targeted`, when given,
    holds the claimed contacts the campaign still targets (still subscribed to one of its
    lists, or matching one of its segments); the others unsubscribed meanwhile.
    """
    if not claimed:
        return claimed
    blocked_ids, blocked_values = _blocked(claimed)
    inactive = _inactive(claimed)

    def dropped(item: ClaimedDelivery) -> bool:
        email = item.email.lower()
        return (
            item.id in blocked_ids
            or email in blocked_values
            or email.rpartition("@")[2] in blocked_values
            or item.contact_id in inactive
            or (targeted is not None and item.contact_id not in targeted)
        )

    keep: list[ClaimedDelivery] = []
    drop: list[int] = []
    for item in claimed:
        if dropped(item):
            drop.append(item.id)
        else:
            keep.append(item)
    if drop:
        _deliveries_mark_suppressed(drop)
    return keep


def deliveries_reclaim_expired(*, now: datetime | None = None) -> int:
    """Return deliveries whose lease expired (their worker died) to the due queue.

    Per-row leases (open-ended claims) and range leases (batch tasks) both. At-least-once:
    such a message may have left before the worker died, so it may repeat. Rows and leases
    are locked (skipped when another sweeper holds them) and the update re-checks the
    lease, so a row claimed again in the meantime is never taken from its new worker. A
    reclaim counts as an attempt; a delivery reclaimed EDM_MAX_RECLAIMS times (a recipient
    that crashes its worker every time) fails instead of taking workers down forever.
    """
    now = now or timezone.now()
    skip_locked = connection.features.has_select_for_update_skip_locked
    reclaimed = 0
    expired_leases = DeliveryLease.objects.filter(expires_at__lt=now).order_by("id")
    with transaction.atomic():
        if skip_locked:
            expired_leases = expired_leases.select_for_update(skip_locked=True)
        for lease in expired_leases[:1000]:
            reclaimed += len(_reclaim_lease(lease, now))
    expired = Delivery.objects.filter(status=DeliveryStatus.SENDING, lease_expires_at__lt=now)
    with transaction.atomic():
        locking = expired.order_by("id")
        if skip_locked:
            locking = locking.select_for_update(skip_locked=True)
        ids = list(locking.values_list("id", flat=True)[:10000])
        if ids:
            rows = list(expired.filter(id__in=ids).values_list("id", "attempts"))
            reclaimed += len(_reclaim_rows(rows, now))
    return reclaimed


def _reclaim_rows(rows: list[tuple[int, int]], now: datetime) -> list[int]:
    """Reclaim these (id, attempts) rows: first the messages the journal says the server
    accepted are recorded sent (replay before resend), then the rest is deferred and due now,
    or failed once reclaimed EDM_MAX_RECLAIMS times. Runs inside the caller's transaction,
    which locked them; the ids reclaimed (not those replayed)."""
    replayed = journal_replay(delivery_ids=[row_id for row_id, _ in rows])
    rows = [row for row in rows if row[0] not in replayed]
    if not rows:
        return []
    poison = [i for i, attempts in rows if attempts + 1 >= settings.EDM_MAX_RECLAIMS]
    retry = [i for i, attempts in rows if attempts + 1 < settings.EDM_MAX_RECLAIMS]
    Delivery.objects.filter(id__in=retry).update(
        status=DeliveryStatus.DEFERRED,
        next_attempt_at=now,
        lease_expires_at=None,
        attempts=F("attempts") + 1,
    )
    Delivery.objects.filter(id__in=poison).update(
        status=DeliveryStatus.FAILED,
        reason="worker_lost",
        smtp_reply="Failed: its worker was lost every time it tried this recipient.",
        lease_expires_at=None,
        attempts=F("attempts") + 1,
    )
    DeliveryEvent.objects.bulk_create(
        [DeliveryEvent(delivery_id=i, kind=EventKind.RECLAIMED, created_at=now) for i in retry]
        + [
            DeliveryEvent(
                delivery_id=i, kind=EventKind.FAILED, created_at=now, detail="worker lost"
            )
            for i in poison
        ]
    )
    logger.warning(
        "reclaimed %d deliveries with expired leases (%d failed)", len(rows), len(poison)
    )
    return [row_id for row_id, _ in rows]


def deliveries_renew_lease(delivery_ids: list[int], *, lease_seconds: int | None = None) -> int:
    """Extend the lease of deliveries a live task still holds (slow servers, rate limits)."""
    if not delivery_ids:
        return 0
    lease = timezone.now() + timedelta(seconds=lease_seconds or settings.EDM_LEASE_SECONDS)
    return Delivery.objects.filter(id__in=delivery_ids, status=DeliveryStatus.SENDING).update(
        lease_expires_at=lease
    )


def deliveries_release(delivery_ids: list[int]) -> int:
    """Give claimed but unsent deliveries back (graceful stop, pause): no attempt counted."""
    if not delivery_ids:
        return 0
    return Delivery.objects.filter(id__in=delivery_ids, status=DeliveryStatus.SENDING).update(
        status=DeliveryStatus.PENDING, lease_expires_at=None, updated_at=timezone.now()
    )


def deliveries_cancel_for(*, campaign_ids: list[int]) -> int:
    """Cancel the open deliveries of several (cancelled) campaigns."""
    if not campaign_ids:
        return 0
    return Delivery.objects.filter(
        campaign_id__in=campaign_ids,
        status__in=[DeliveryStatus.PENDING, DeliveryStatus.DEFERRED],
    ).update(status=DeliveryStatus.CANCELLED, updated_at=timezone.now())


def deliveries_cancel(*, campaign_id: int) -> int:
    """Cancel every delivery of a campaign that has not been attempted to completion."""
    return Delivery.objects.filter(
        campaign_id=campaign_id,
        status__in=[DeliveryStatus.PENDING, DeliveryStatus.DEFERRED],
    ).update(status=DeliveryStatus.CANCELLED, updated_at=timezone.now())
