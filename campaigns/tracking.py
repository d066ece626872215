"""Tracking writes: link registration, buffered open/click hits, the event tail, counters.

Why a buffer: at 2,000 hits/s an INSERT plus a counter UPDATE per request would serialize
every web worker on SQLite's single writer. A hit is instead one RPUSH of a small JSON
document onto a Redis list (``tracking_hit_push``, ~0.1 ms); the periodic task
``campaigns.tracking_flush`` moves the list to a processing key atomically and writes it in
bulk: one INSERT of DeliveryEvents and one upsert-increment per counter table. The processing
key is deleted only after the database transaction commits, so a crash repeats a batch rather
than losing it, and a normal stop loses nothing (the hits are in Redis once the response was
sent; the flush task finishes its transaction on a warm shutdown). When Redis is unreachable
the hit is written synchronously instead, so nothing is lost then either, only slower.

The event tail (``tracking_tail``) reads DeliveryEvent by id from a cursor and turns what the
send path and bounce intake write (sent, bounces, complaints) into the same counters and into
outgoing webhook deliveries, without touching the send path.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import redis
from django.conf import settings
from django.db import connection, models, transaction
from django.utils import timezone

from campaigns.tracking_models import (
    ENGAGEMENT_HIT_FIELDS,
    CampaignDomainStats,
    CampaignLink,
    CampaignMinute,
    CampaignStats,
    Engagement,
    TrackingCursor,
    WebhookEvent,
)
from config.redis import get_redis
from delivery.models import Delivery, DeliveryEvent, EventKind
from delivery.tracking import Hit, TrackedLink, classify_hits, find_links, url_hash

logger = logging.getLogger(__name__)

# Read once here (the settings module does not define them yet; defaults are the documented ones).
TOKEN_MAX_AGE_SECONDS = settings.EDM_TRACKING_TOKEN_DAYS * 86400
BUFFER_KEY = "skylark:tracking:hits"
PROCESSING_KEY = "skylark:tracking:processing"
FLUSH_LOCK_KEY = "skylark:tracking:flush-lock"
FLUSH_BATCH = 5000
TAIL_BATCH = 5000
# Events younger than this are left for the next run: on PostgreSQL a lower id can commit
# after a higher one, and the tail must not step over it.
TAIL_LAG_SECONDS = 10

_TAKE = """
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #items > 0 then
  redis.call('LTRIM', KEYS[1], #items, -1)
  redis.call('RPUSH', KEYS[2], unpack(items))
end
return items
"""


# --- links ---------------------------------------------------------------------------------


def campaign_links_register(
    *, campaign_id: int, html: str, exclude: Iterable[str] = ()
) -> dict[str, int]:
    """Register the campaign's trackable links (idempotent); returns url -> link id."""
    urls = find_links(html, exclude=exclude)
    if not urls:
        return {}
    CampaignLink.objects.bulk_create(
        [
            CampaignLink(campaign_id=campaign_id, url=url, url_hash=url_hash(url), position=i)
            for i, url in enumerate(urls)
        ],
        ignore_conflicts=True,
    )
    hashes = {url_hash(url): url for url in urls}
    rows = CampaignLink.objects.filter(campaign_id=campaign_id, url_hash__in=hashes)
    return {hashes[h]: pk for pk, h in rows.values_list("pk", "url_hash")}


_LINKS: dict[int, TrackedLink] = {}


def tracked_link(link_id: int) -> TrackedLink | None:
    """A registered link by id, cached per process (links never change once registered)."""
    link = _LINKS.get(link_id)
    if link is None:
        row = CampaignLink.objects.filter(pk=link_id).values_list("campaign_id", "url").first()
        if row is None:
            return None
        link = _LINKS[link_id] = TrackedLink(id=link_id, campaign_id=row[0], url=row[1])
    return link


# --- hits: buffer and flush -------------------------------------------------------------------


def tracking_hit_push(hit: Hit) -> None:
    """Buffer one hit; written synchronously when Redis is unreachable."""
    try:
        get_redis().rpush(BUFFER_KEY, json.dumps(asdict(hit), separators=(",", ":")))
    except redis.RedisError:
        logger.warning(
            "tracking buffer unreachable: writing hit of delivery %s now", hit.delivery_id
        )
        tracking_record_hits([hit])


def tracking_flush(*, budget_seconds: float = 20.0) -> int:
    """Write buffered hits in bulk, then run the event tail; returns the hits written.

    One flusher at a time (a Redis lock); a batch left in the processing key by a crash is
    written first.
    """
    client = get_redis()
    if not client.set(FLUSH_LOCK_KEY, "1", nx=True, ex=120):
        return 0
    written = 0
    try:
        deadline = time.monotonic() + budget_seconds
        take = client.register_script(_TAKE)
        while time.monotonic() < deadline:
            items = client.lrange(PROCESSING_KEY, 0, -1) or take(
                keys=[BUFFER_KEY, PROCESSING_KEY], args=[FLUSH_BATCH]
            )
            if not items:
                break
            hits = [Hit(**json.loads(item)) for item in items]
            tracking_record_hits(hits)
            client.delete(PROCESSING_KEY)
            written += len(hits)
        tracking_tail(budget_seconds=max(1.0, deadline - time.monotonic()))
    finally:
        client.delete(FLUSH_LOCK_KEY)
    return written


def _minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def _domain(email: str) -> str:
    return email.rpartition("@")[2].lower()


class _Slots(NamedTuple):
    """The counters one hit or event increments (a campaign's, a minute's, a domain's)."""

    stats: dict[str, int]
    minute: dict[str, int]
    domain: dict[str, int]


class _Counters:
    """Increments gathered in memory, written as one upsert per table."""

    def __init__(self) -> None:
        self.stats: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.minutes: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.domains: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.links: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def slots(self, campaign_id: int, at: datetime, email: str) -> _Slots:
        """The campaign's, its minute's and the recipient domain's counters, to increment."""
        return _Slots(
            self.stats[(campaign_id,)],
            self.minutes[(campaign_id, _minute(at))],
            self.domains[(campaign_id, _domain(email))],
        )

    def write(self) -> None:
        _upsert_increment(CampaignStats, ("campaign_id",), self.stats)
        _upsert_increment(CampaignMinute, ("campaign_id", "minute"), self.minutes)
        _upsert_increment(CampaignDomainStats, ("campaign_id", "domain"), self.domains)
        for link_id, fields in self.links.items():
            CampaignLink.objects.filter(pk=link_id).update(
                **{name: models.F(name) + n for name, n in fields.items()}
            )


def _counter_fields(model: type[models.Model]) -> list[str]:
    return [
        f.column
        for f in model._meta.concrete_fields
        if isinstance(f, models.PositiveIntegerField) and not f.primary_key
    ]


def _upsert_increment(
    model: type[models.Model], keys: tuple[str, ...], rows: dict[tuple, dict[str, int]]
) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE SET n = n + excluded.n, for many rows at once.

    The same SQL runs on SQLite (3.24+) and PostgreSQL.
    """
    if not rows:
        return
    table = model._meta.db_table
    counters = _counter_fields(model)
    extra = ["updated_at"] if any(f.column == "updated_at" for f in model._meta.fields) else []
    columns = [*keys, *counters, *extra]
    quote = connection.ops.quote_name
    updates = [f"{quote(c)} = {quote(table)}.{quote(c)} + excluded.{quote(c)}" for c in counters]
    updates += [f"{quote(c)} = excluded.{quote(c)}" for c in extra]
    sql = (
        f"INSERT INTO {quote(table)} ({', '.join(quote(c) for c in columns)}) "
        f"VALUES ({', '.join(['%s'] * len(columns))}) "
        f"ON CONFLICT ({', '.join(quote(k) for k in keys)}) DO UPDATE SET {', '.join(updates)}"
    )
    now = timezone.now()
    params = []
    for key, fields in rows.items():
        key = key if isinstance(key, tuple) else (key,)
        params.append([*key, *(fields.get(c, 0) for c in counters), *([now] if extra else [])])
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


@dataclass
class _HitRow:
    """One hit being recorded, with the counters and the engagement row it increments."""

    hit: Hit
    at: datetime
    machine: bool
    engagement: Engagement
    slots: _Slots
    data: dict
    counters: _Counters
    clicked_links: set[tuple[int, int]]  # (delivery, link) pairs clicked by a person before
    links: dict[int, TrackedLink | None]


def _count(row: _HitRow, *, plural: str, first_at: str) -> None:
    """The counters of an open or a click: machine hits apart, a person's first one unique."""
    engagement, (stats, minute, domain) = row.engagement, row.slots
    if row.machine:
        machine = f"machine_{plural}"
        if getattr(engagement, machine) == 0:
            stats[f"unique_{machine}"] += 1
        setattr(engagement, machine, getattr(engagement, machine) + 1)
        stats[machine] += 1
        minute[machine] += 1
        return
    if getattr(engagement, first_at) is None:
        setattr(engagement, first_at, row.at)
        stats[f"unique_{plural}"] += 1
        domain[f"unique_{plural}"] += 1
    setattr(engagement, plural, getattr(engagement, plural) + 1)
    stats[plural] += 1
    minute[plural] += 1


def _record_open(row: _HitRow) -> str:
    _count(row, plural="opens", first_at="first_opened_at")
    return EventKind.OPEN


def _record_click(row: _HitRow) -> str:
    """A click also counts on its link (unique per person and link) and names the URL."""
    hit = row.hit
    link = row.links.get(hit.link_id)
    row.data.update(link_id=hit.link_id, url=link.url if link else "")
    _count(row, plural="clicks", first_at="first_clicked_at")
    link_counts = row.counters.links[hit.link_id]
    if row.machine:
        link_counts["machine_clicks"] += 1
        return EventKind.CLICK
    if (hit.delivery_id, hit.link_id) not in row.clicked_links:
        row.clicked_links.add((hit.delivery_id, hit.link_id))
        link_counts["unique_clicks"] += 1
    link_counts["clicks"] += 1
    return EventKind.CLICK


# How each kind of hit (Hit.kind) is counted; each returns the kind of its DeliveryEvent.
HIT_RECORDERS: dict[str, Callable[[_HitRow], str]] = {
    "open": _record_open,
    "click": _record_click,
}


def _hit_deliveries(hits: Sequence[Hit]) -> dict[int, tuple[int, str, datetime | None]]:
    """delivery id -> (campaign id, email, sent at) of the hits' deliveries that exist."""
    rows = Delivery.objects.filter(pk__in={h.delivery_id for h in hits}).values_list(
        "pk", "campaign_id", "email", "sent_at"
    )
    return {pk: (campaign_id, email, sent_at) for pk, campaign_id, email, sent_at in rows}


def _clicked_links(hits: Sequence[Hit]) -> set[tuple[int, int]]:
    """The (delivery, link) pairs a person clicked in earlier flushes: a link's unique clicks."""
    click_ids = {h.delivery_id for h in hits if h.kind == "click"}
    clicked: set[tuple[int, int]] = set()
    if not click_ids:
        return clicked
    for delivery_id, data in DeliveryEvent.objects.filter(
        delivery_id__in=click_ids, kind=EventKind.CLICK
    ).values_list("delivery_id", "data"):
        if isinstance(data, dict) and not data.get("machine") and data.get("link_id"):
            clicked.add((delivery_id, data["link_id"]))
    return clicked


def tracking_record_hits(hits: Sequence[Hit]) -> int:
    """Write open/click hits in bulk: events, engagement, counters. Returns the hits kept.

    Hits of unknown deliveries, and clicks whose link belongs to another campaign, are
    dropped. Machine hits are kept, flagged, and counted apart. Each kind is counted by its
    entry of HIT_RECORDERS.
    """
    if not hits:
        return 0
    hits = sorted(hits, key=lambda h: h.at)
    deliveries = _hit_deliveries(hits)
    hits = [
        h
        for h in hits
        if h.delivery_id in deliveries
        and h.kind in HIT_RECORDERS
        and (h.kind == "open" or h.campaign_id == deliveries[h.delivery_id][0])
    ]
    if not hits:
        return 0
    sent_at = {pk: (row[2].timestamp() if row[2] else None) for pk, row in deliveries.items()}
    reasons = classify_hits(hits, sent_at=sent_at)
    engaged = {
        e.pk: e for e in Engagement.objects.filter(delivery_id__in={h.delivery_id for h in hits})
    }
    clicked_links = _clicked_links(hits)
    links = {h.link_id: tracked_link(h.link_id) for h in hits if h.link_id}
    counters = _Counters()
    events: list[DeliveryEvent] = []
    touched: dict[int, Engagement] = {}
    for hit, reason in zip(hits, reasons, strict=True):
        campaign_id, email, _sent = deliveries[hit.delivery_id]
        at = datetime.fromtimestamp(hit.at, tz=UTC)
        engagement = engaged.get(hit.delivery_id) or touched.get(hit.delivery_id)
        if engagement is None:
            engagement = Engagement(delivery_id=hit.delivery_id, campaign_id=campaign_id)
        touched[hit.delivery_id] = engagement
        data: dict = {"machine": bool(reason), "user_agent": hit.user_agent[:300], "ip": hit.ip}
        if hit.method != "GET":
            data["method"] = hit.method
        row = _HitRow(
            hit=hit,
            at=at,
            machine=bool(reason),
            engagement=engagement,
            slots=counters.slots(campaign_id, at, email),
            data=data,
            counters=counters,
            clicked_links=clicked_links,
            links=links,
        )
        kind = HIT_RECORDERS[hit.kind](row)
        events.append(
            DeliveryEvent(
                delivery_id=hit.delivery_id, kind=kind, created_at=at, detail=reason, data=data
            )
        )
    with transaction.atomic():
        DeliveryEvent.objects.bulk_create(events, batch_size=1000)
        Engagement.objects.bulk_create(
            list(touched.values()),
            update_conflicts=True,
            unique_fields=["delivery"],
            update_fields=list(ENGAGEMENT_HIT_FIELDS),
            batch_size=1000,
        )
        counters.write()
    return len(events)


# --- the event tail: sent, bounces, complaints, and webhooks for everything -------------------

_TAILED_KINDS = (
    EventKind.SENT,
    EventKind.BOUNCED,
    EventKind.FAILED,
    EventKind.COMPLAINT,
    EventKind.OPEN,
    EventKind.CLICK,
    EventKind.UNSUBSCRIBE,
)
WEBHOOK_EVENT_FOR_KIND = {
    EventKind.SENT: WebhookEvent.SENT,
    EventKind.BOUNCED: WebhookEvent.BOUNCED,
    EventKind.COMPLAINT: WebhookEvent.COMPLAINED,
    EventKind.OPEN: WebhookEvent.OPENED,
    EventKind.CLICK: WebhookEvent.CLICKED,
    EventKind.UNSUBSCRIBE: WebhookEvent.UNSUBSCRIBED,
}


def _async_report(data: object) -> bool:
    return isinstance(data, dict) and data.get("source") == "bounce report"


def _count_sent(slots: _Slots, data: object) -> None:
    slots.minute["sent"] += 1
    slots.domain["sent"] += 1


def _count_bounced(slots: _Slots, data: object) -> None:
    if _async_report(data):
        # A report after a 250: the message was counted sent, now it is not delivered.
        slots.stats["async_bounces"] += 1
    slots.minute["bounced"] += 1
    slots.domain["bounced"] += 1


def _count_failed(slots: _Slots, data: object) -> None:
    """A failure counts as a bounce only when a report came after the 250 (a policy block)."""
    if _async_report(data):
        _count_bounced(slots, data)


def _count_complaint(slots: _Slots, data: object) -> None:
    slots.stats["complaints"] += 1
    slots.domain["complaints"] += 1


# What the tail counts for each kind of event the send path and the intake write (opens,
# clicks and unsubscribes are counted where they happen and only go on to the webhooks).
TAIL_COUNTERS: dict[str, Callable[[_Slots, object], None]] = {
    EventKind.SENT: _count_sent,
    EventKind.BOUNCED: _count_bounced,
    EventKind.FAILED: _count_failed,
    EventKind.COMPLAINT: _count_complaint,
}


def _tail_read(cursor: TrackingCursor, cutoff: datetime) -> tuple[int, _Counters, list, int]:
    """One batch of events after the cursor, older than the cutoff: the last id read, the
    counters and webhook events they make, and how many rows were read."""
    rows = list(
        DeliveryEvent.objects.filter(id__gt=cursor.last_id)
        .order_by("id")
        .values_list(
            "id",
            "kind",
            "created_at",
            "delivery_id",
            "delivery__campaign_id",
            "delivery__email",
            "data",
            "detail",
        )[:TAIL_BATCH]
    )
    last_id = cursor.last_id
    counters = _Counters()
    webhook_events = []
    for event_id, kind, created_at, delivery_id, campaign_id, email, data, detail in rows:
        if created_at > cutoff:
            break
        last_id = event_id
        if kind not in _TAILED_KINDS:
            continue
        # Every tailed kind touches its campaign's, minute's and domain's rows (as it always
        # has: an open's minute gets its row even though the hit counted the open). A
        # transactional message's delivery has no campaign: no counters, its webhooks go.
        if campaign_id is not None:
            slots = counters.slots(campaign_id, created_at, email)
            count = TAIL_COUNTERS.get(kind)
            if count is not None:
                count(slots, data)
        if kind in WEBHOOK_EVENT_FOR_KIND:
            webhook_events.append(
                {
                    "event": WEBHOOK_EVENT_FOR_KIND[kind],
                    "event_id": event_id,
                    "occurred_at": created_at.isoformat(),
                    "campaign_id": campaign_id,
                    "delivery_id": delivery_id,
                    "email": email,
                    "detail": detail,
                    "data": data if isinstance(data, dict) else {},
                }
            )
    return last_id, counters, webhook_events, len(rows)


def tracking_tail(*, budget_seconds: float = 10.0, now: datetime | None = None) -> int:
    """Count new sent/bounce/complaint events and queue webhooks for every tracked kind."""
    from campaigns.webhooks import webhooks_enqueue

    deadline = time.monotonic() + budget_seconds
    cutoff = (now or timezone.now()) - timedelta(seconds=TAIL_LAG_SECONDS)
    handled = 0
    while time.monotonic() < deadline:
        cursor, _ = TrackingCursor.objects.get_or_create(name="events")
        last_id, counters, webhook_events, read = _tail_read(cursor, cutoff)
        if last_id == cursor.last_id:
            break
        with transaction.atomic():
            counters.write()
            webhooks_enqueue(webhook_events)
            TrackingCursor.objects.filter(name="events", last_id=cursor.last_id).update(
                last_id=last_id
            )
        handled += len(webhook_events)
        if read < TAIL_BATCH:
            break
    return handled


# --- unsubscribe counters and the preference center ----------------------------------------


def tracking_record_unsubscribe(*, delivery_id: int, campaign_id: int, at: datetime) -> bool:
    """Count an unsubscribe once per delivery (repeats and re-subscriptions count nothing)."""
    first = Engagement.objects.filter(delivery_id=delivery_id, unsubscribed_at=None).update(
        unsubscribed_at=at
    )
    if not first:
        if Engagement.objects.filter(delivery_id=delivery_id).exists():
            return False
        Engagement.objects.create(
            delivery_id=delivery_id, campaign_id=campaign_id, unsubscribed_at=at
        )
    _upsert_increment(CampaignStats, ("campaign_id",), {(campaign_id,): {"unsubscribes": 1}})
    return True


def contact_preferences(*, delivery_id: int) -> list[dict]:
    """The lists of the delivery's contact, with whether they are subscribed to each."""
    from contacts.models import Subscription, SubscriptionStatus

    contact_id = (
        Delivery.objects.filter(pk=delivery_id).values_list("contact_id", flat=True).first()
    )
    rows = Subscription.objects.filter(contact_id=contact_id).select_related("contact_list")
    return [
        {
            "id": s.contact_list_id,
            "name": s.contact_list.name,
            "description": s.contact_list.description,
            "subscribed": s.status != SubscriptionStatus.UNSUBSCRIBED,
        }
        for s in rows.order_by("contact_list__name")
    ]


def contact_preferences_update(*, delivery_id: int, keep_list_ids: Iterable[int]) -> int:
    """Stay on the chosen lists, leave the others (the contact's own choice from the
    preference center); returns how many lists were left."""
    from contacts.models import Subscription, SubscriptionStatus

    delivery = Delivery.objects.filter(pk=delivery_id).values("contact_id", "campaign_id").first()
    if delivery is None:
        return 0
    keep = set(keep_list_ids)
    now = timezone.now()
    mine = Subscription.objects.filter(contact_id=delivery["contact_id"])
    with transaction.atomic():
        left = (
            mine.exclude(contact_list_id__in=keep)
            .exclude(status=SubscriptionStatus.UNSUBSCRIBED)
            .update(status=SubscriptionStatus.UNSUBSCRIBED, updated_at=now)
        )
        mine.filter(contact_list_id__in=keep, status=SubscriptionStatus.UNSUBSCRIBED).update(
            status=SubscriptionStatus.SUBSCRIBED, source="preference center", updated_at=now
        )
        if left:
            DeliveryEvent.objects.create(
                delivery_id=delivery_id,
                kind=EventKind.UNSUBSCRIBE,
                created_at=now,
                detail="preference center",
                data={"kept_lists": sorted(keep)},
            )
            tracking_record_unsubscribe(
                delivery_id=delivery_id, campaign_id=delivery["campaign_id"], at=now
            )
    return left
