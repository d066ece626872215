"""Writes of the campaigns app: create, validate, send, dispatch, send batches, finish."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from campaigns.errors import CampaignStateError, CampaignValidationError
from campaigns.models import Campaign, CampaignStatus
from campaigns.sending import claims
from campaigns.sending.claims import ClaimedDelivery
from campaigns.tracking import campaign_links_register
from contacts.models import ContactList, SubscriptionStatus
from contacts.segments import SegmentRuleError
from delivery import selectors as delivery_selectors
from delivery import services as delivery_services
from delivery import tokens, tracking
from delivery.health import quota_refund, quota_take, record_result
from delivery.models import Delivery, DeliveryLease, DeliveryStatus
from delivery.ratelimit import is_slow_down, slow_down, slow_down_keys
from delivery.redis import claim_once, get_redis, release
from delivery.selectors import Route
from mailkit.compose import (
    Attachment,
    Composer,
    MessageSpec,
    make_message_id,
    validate_address,
)
from mailkit.dkim import DkimSigner
from mailkit.errors import DeliveryError, TemplateError
from mailkit.outcomes import Outcome, RetryPolicy, failed_outcome, outcome_for_result
from mailkit.render import (
    CompiledTemplates,
    TemplateSource,
    compile_templates,
    contact_context,
    render_content,
)
from mailkit.runner import send_envelopes
from mailkit.smtp import Envelope, SendResult, SendStatus
from mailkit.verp import verp_address

logger = logging.getLogger(__name__)
T = TypeVar("T")

SENDABLE_FROM = (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED, CampaignStatus.FAILED)


@dataclass(frozen=True)
class PreparedCampaign:
    """Everything done once per campaign so the per-recipient path only personalizes."""

    campaign_id: int
    campaign_name: str
    compiled: CompiledTemplates
    composer: Composer
    signer: DkimSigner | None
    message_id_domain: str
    attachments: tuple[Attachment, ...] = ()
    routes: tuple[Route, ...] = ()  # SMTP servers, rate limits; one chosen per batch task

    def recipient_context(self, row: ClaimedDelivery, *, pixel: bool = True) -> dict:
        """What the templates see for one recipient: their attributes and their own links.

        Tracking URLs are the per-recipient half of the links rewritten once per campaign
        (delivery.tracking.instrument_html); computing them is a few HMACs, no database.
        """
        public = settings.EDM_PUBLIC_URL
        return contact_context(
            email=row.email,
            name=row.name,
            attributes=row.attributes or {},
            extra={
                "unsubscribe_url": tokens.unsubscribe_url(row.id),
                "campaign_name": self.campaign_name,
                "webview_url": f"{public}/v/{tracking.recipient_token('webview', row.id)}/",
                tracking.OPEN_PIXEL_VAR: (
                    f"{public}/o/{tracking.recipient_token('open', row.id)}.gif" if pixel else ""
                ),
                tracking.CLICK_BASE_VAR: (
                    f"{public}/c/{tracking.click_token(row.id, self.campaign_id)}/"
                ),
            },
        )

    def envelope(self, row: ClaimedDelivery) -> Envelope:
        """Render, compose and sign one recipient's message: no database access."""
        context = self.recipient_context(row)
        unsubscribe = context["unsubscribe_url"]
        content = render_content(self.compiled, context)
        message_id = make_message_id(
            domain=self.message_id_domain, delivery_id=row.id, secret=tokens.message_id_secret()
        )
        reference = tokens.delivery_reference(row.id)
        data = self.composer.compose(
            to_email=row.email,
            to_name=row.name,
            content=content,
            message_id=message_id,
            unsubscribe_url=unsubscribe,
            unsubscribe_mailto=tokens.unsubscribe_mailto(delivery_id=row.id),
            delivery_reference=reference,
            attachments=self.attachments,
        )
        if self.signer is not None:
            data = self.signer.sign(data)
        sender = verp_address(
            delivery_id=row.id, domain=settings.EDM_BOUNCE_DOMAIN, secret=settings.SECRET_KEY
        )
        # RFC 6531: only a non-ASCII local part needs SMTPUTF8; an internationalized domain
        # travels as its A-label (xn--...), which any server accepts.
        recipient = validate_address(row.email)
        return Envelope(
            sender=sender,
            recipients=(recipient,),
            data=data,
            tag=(row.id, message_id),
            smtputf8=not recipient.isascii(),
            dsn_envid=reference,
            dsn_notify="FAILURE,DELAY",
            dsn_ret="HDRS",
        )


# Prepared campaigns per worker process, keyed by id and last change.
_PREPARED: dict[int, tuple[datetime, PreparedCampaign]] = {}


def campaign_list_id(campaign: Campaign, from_domain: str) -> str:
    """The List-Id header (RFC 2919): the id is ASCII; the campaign's name is kept as the
    phrase only when it needs no quoting or encoding."""
    if not campaign.lists.exists():
        return ""
    name = campaign.name
    plain = name.isascii() and not set('<>"\\()[]:;@,') & set(name)
    return f"{name if plain else ''} <campaign-{campaign.pk}.{from_domain}>".strip()


def campaign_attachments(campaign: Campaign) -> tuple[Attachment, ...]:
    """The campaign's files, read once per campaign (the composer encodes each once too)."""
    import mimetypes
    from pathlib import PurePath

    files = []
    for item in campaign.attachments.all():
        name = item.filename or PurePath(item.file.name).name
        content_type = (
            item.content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        )
        with item.file.open("rb") as handle:
            files.append(Attachment(name, content_type, handle.read(), item.content_id))
    return tuple(files)


def campaign_prepare(campaign: Campaign) -> PreparedCampaign:
    cached = _PREPARED.get(campaign.pk)
    if cached and cached[0] == campaign.updated_at:
        return cached[1]
    subject, html, text = campaign.content()
    # Links are registered and rewritten once per campaign; only registered links redirect.
    link_ids = campaign_links_register(campaign_id=campaign.pk, html=html)
    html = tracking.instrument_html(
        html,
        link_tokens={url: tracking.link_token(campaign.pk, pk) for url, pk in link_ids.items()},
    )
    compiled = compile_templates(TemplateSource(subject=subject, html=html, text=text))
    from_domain = campaign.from_email.rpartition("@")[2].lower()
    list_id = campaign_list_id(campaign, from_domain)
    attachments = campaign_attachments(campaign)
    composer = Composer(
        MessageSpec(
            from_email=campaign.from_email,
            from_name=campaign.from_name,
            reply_to=campaign.reply_to,
            list_id=list_id,
            campaign_id=campaign.pk,
        )
    )
    routes = delivery_selectors.routes_for(list(campaign.smtp_servers.all()))
    prepared = PreparedCampaign(
        campaign_id=campaign.pk,
        campaign_name=campaign.name,
        compiled=compiled,
        composer=composer,
        signer=delivery_selectors.dkim_signer_for(from_domain),
        message_id_domain=from_domain,
        routes=tuple(routes),
        attachments=attachments,
    )
    _PREPARED[campaign.pk] = (campaign.updated_at, prepared)
    return prepared


def campaign_validate(campaign: Campaign, *, sample_size: int = 50) -> list[str]:
    """Problems that stop a send (the pre-flight's errors): found before the first message."""
    from campaigns.preflight import campaign_preflight

    report = campaign_preflight(campaign, sample_size=sample_size, at_send=True)
    problems = [finding.message for finding in report.errors]
    if problems:
        return problems
    try:
        campaign_prepare(campaign)
    except (TemplateError, DeliveryError) as exc:
        return [f"The campaign cannot be prepared: {exc}"]
    return []


def campaign_create(
    *,
    name: str,
    list_names: list[str],
    subject: str,
    html: str,
    text: str = "",
    from_email: str,
    from_name: str = "",
    reply_to: str = "",
) -> Campaign:
    lists = []
    for list_name in list_names:
        contact_list = ContactList.objects.filter(name=list_name).first()
        if contact_list is None:
            raise CampaignValidationError([f"No contact list named {list_name!r}."])
        lists.append(contact_list)
    with transaction.atomic():
        campaign = Campaign.objects.create(
            name=name,
            subject=subject,
            html=html,
            text=text,
            from_email=from_email,
            from_name=from_name,
            reply_to=reply_to,
        )
        campaign.lists.set(lists)
    try:
        compile_templates(TemplateSource(subject=subject, html=html, text=text))
    except TemplateError as exc:
        campaign.delete()
        raise CampaignValidationError([f"Template error: {exc}"]) from exc
    return campaign


def campaign_send(*, campaign_id: int) -> Campaign:
    """Start sending now: lock, validate, mark sending, dispatch after commit."""
    from campaigns.tasks import campaign_dispatch

    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign_id)
        if campaign.status not in SENDABLE_FROM:
            raise CampaignStateError(
                f"Campaign {campaign_id} is {campaign.status}; only a draft, scheduled or "
                "failed campaign can be sent."
            )
        problems = campaign_validate(campaign)
        if problems:
            raise CampaignValidationError(problems)
        campaign.status = CampaignStatus.SENDING
        campaign.status_reason = ""
        campaign.started_at = campaign.started_at or timezone.now()
        campaign.dispatched_at = None
        campaign.save(
            update_fields=["status", "status_reason", "started_at", "dispatched_at", "updated_at"]
        )
        campaign_dispatch.delay_on_commit(campaign.pk)
    return campaign


def _enqueue_batches(campaign_id: int, *, above: int | None = None) -> tuple[int, int | None]:
    """Enqueue one batch task per EDM_BATCH_SIZE open deliveries, by id range: (the number of
    tasks, the last id enqueued). ``above``: only deliveries with a greater id.

    Streams the ids (a million-recipient campaign never holds them all in memory).
    """
    from campaigns.tasks import campaign_send_batch

    size = settings.EDM_BATCH_SIZE
    open_deliveries = Delivery.objects.filter(
        campaign_id=campaign_id,
        status__in=[DeliveryStatus.PENDING, DeliveryStatus.DEFERRED],
    )
    if above is not None:
        open_deliveries = open_deliveries.filter(id__gt=above)
    ids = open_deliveries.order_by("id").values_list("id", flat=True).iterator(chunk_size=10000)
    batches = 0
    first = last = None
    count = 0
    for delivery_id in ids:
        first = delivery_id if first is None else first
        last = delivery_id
        count += 1
        if count == size:
            campaign_send_batch.delay(campaign_id, first, last)
            batches += 1
            first, count = None, 0
    if count:
        campaign_send_batch.delay(campaign_id, first, last)
        batches += 1
    return batches, last


def campaign_dispatch(*, campaign_id: int) -> int:
    """Materialize the deliveries and enqueue batch tasks by id range; re-runnable."""
    campaign = Campaign.objects.filter(pk=campaign_id).first()
    if campaign is None or campaign.status != CampaignStatus.SENDING:
        return 0
    list_ids = list(campaign.lists.values_list("id", flat=True))
    # A segment's rules are read now: contacts that match at dispatch time are the recipients.
    try:
        segment_querysets = [segment.contacts() for segment in campaign.segments.all()]
    except SegmentRuleError as exc:
        # Validated at send time; a list deleted since then can still break a rule.
        Campaign.objects.filter(pk=campaign_id, status=CampaignStatus.SENDING).update(
            status=CampaignStatus.FAILED,
            status_reason=f"A target segment has invalid rules: {exc}",
            updated_at=timezone.now(),
        )
        logger.warning("campaign %s: segment rules invalid at dispatch", campaign_id)
        return 0
    # A chunk of contacts at a time, each chunk's batches enqueued at once: the first
    # messages leave after one chunk is materialized, not after the whole audience.
    created = batches = 0
    last_enqueued = None
    existing = campaign.deliveries.count()  # a re-run: what an earlier dispatch made
    chunks = _contact_id_chunks(settings.EDM_DISPATCH_CHUNK, first=settings.EDM_BATCH_SIZE)
    for contact_ids in chunks:
        created += claims.deliveries_materialize(
            campaign_id=campaign_id,
            list_ids=list_ids,
            segment_querysets=segment_querysets,
            contact_ids=contact_ids,
        )
        enqueued, last = _enqueue_batches(campaign_id, above=last_enqueued)
        batches += enqueued
        last_enqueued = last if last is not None else last_enqueued
        # Progress shows the audience growing while the first messages go out.
        Campaign.objects.filter(pk=campaign_id).update(total_recipients=existing + created)
    total = campaign.deliveries.count()
    Campaign.objects.filter(pk=campaign_id).update(
        total_recipients=total, dispatched_at=timezone.now()
    )
    logger.info(
        "campaign %s dispatched: %d new deliveries, %d in total, %d batches",
        campaign_id,
        created,
        total,
        batches,
    )
    # The batches may all have ended before dispatched_at was set (they cannot finish the
    # campaign before it is): look now.
    campaign_finish_if_done(campaign_id=campaign_id)
    return batches


def _contact_id_chunks(size: int, *, first: int | None = None) -> list[tuple[int, int]]:
    """Ranges of contact ids (both ends included) covering every contact, ``size`` ids each;
    the first one ``first`` ids (a small first chunk: the first batch starts sooner)."""
    from django.db.models import Max, Min

    from contacts.models import Contact

    bounds = Contact.objects.aggregate(low=Min("id"), high=Max("id"))
    low, high = bounds["low"], bounds["high"]
    if low is None:
        return []
    chunks = []
    if first and first < size:
        chunks.append((low, min(low + first - 1, high)))
        low += first
    return chunks + [(start, min(start + size - 1, high)) for start in range(low, high + 1, size)]


class _InlineLane:
    """Runs database work at once, in the calling thread (SQLite; inside a transaction)."""

    background = False  # nothing is claimed ahead: it would only hold rows longer

    def submit(self, function: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(function(*args))
        except Exception as exc:  # raised where the result is asked for, as with a thread
            future.set_exception(exc)
        return future


class _ThreadLane:
    """One thread with a database connection of its own that runs a batch task's outcome
    writes and its next claim, in order, while the task's thread renders and hands messages
    to the SMTP pool: the server's time then overlaps the sending instead of stalling it.

    One per worker process, reused by its tasks (a new one after a fork), so its connection
    lives as long as CONN_MAX_AGE allows instead of one connection per task.
    """

    background = True

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=_LANE_THREAD)

    def begin(self) -> _ThreadLane:
        """At the start of a task: drop the lane's connection if broken or too old (what
        Celery does for the task's own connection). Not waited for: the previous task's
        last writes may still be running, and the check runs after them, before this
        task's work."""
        from django.db import connection

        # Looked up in the lane thread: that thread's own connection.
        self._executor.submit(lambda: connection.close_if_unusable_or_obsolete())
        return self

    def submit(self, function: Callable[..., T], *args: Any) -> Future[T]:
        return self._executor.submit(function, *args)

    def shutdown(self) -> None:
        from django.db import connection

        self._executor.submit(lambda: connection.close()).result()
        self._executor.shutdown(wait=True)


_lane: _ThreadLane | None = None
_LANE_THREAD = "skylark-db"


def database_lane_close() -> None:
    """Run what is queued on this process's database lane, then close it and its connection
    (a stopping worker process, on worker_process_shutdown; tests, before dropping their
    database)."""
    global _lane
    lane, _lane = _lane, None
    if lane is not None and lane.pid == os.getpid():
        lane.shutdown()


def _database_lane() -> _InlineLane | _ThreadLane:
    from django.db import connection

    global _lane
    # Another connection could not see the rows of a transaction the caller holds open; and
    # SQLite writes in this process anyway (a second writer would only wait for the lock).
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return _InlineLane()
    if threading.current_thread().name.startswith(_LANE_THREAD):
        # A task run from the lane itself (Celery in eager mode, a task's tail enqueueing
        # the rest of its range): queueing work for its own thread and waiting for it
        # would never end.
        return _InlineLane()
    if _lane is None or _lane.pid != os.getpid():
        _lane = _ThreadLane()
    return _lane.begin()


class _BatchRun:
    """One batch task's sending: claims, hand-over to the SMTP pool, outcomes, leases.

    Rows move from `held` (claimed, not yet handed to the pool) to `in_flight` (handed, result
    pending) to an outcome. Outcomes are written, held and in-flight leases renewed, and the
    campaign's status looked at, at least every EDM_FLUSH_SECONDS, also while the server is
    slow or a rate limit holds messages back. On pause, cancel, the task's time budget or an
    error, held rows are given back (no attempt counted) so a stop waits only for the few
    messages already on the wire.
    """

    def __init__(
        self,
        campaign: Campaign,
        prepared: PreparedCampaign,
        *,
        id_from: int | None,
        id_to: int | None,
        holder: str = "",
        careful_to: int | None = None,
    ) -> None:
        self.campaign = campaign
        self.campaign_id = campaign.pk
        self.prepared = prepared
        self.id_from, self.id_to = id_from, id_to
        # A range is leased as a whole and read a chunk at a time (no write per row); an
        # open-ended task (the sweeper's retries) claims row by row.
        self.ranged = id_from is not None and id_to is not None
        self.holder = holder or uuid.uuid4().hex
        self.lease: DeliveryLease | None = None
        self.refused = False  # the range (or part of it) is leased to another live task
        # After taking a dead task's lease over: up to this id, rows are sent one at a time,
        # each outcome written before the next row is read, so that a recipient that kills
        # its worker is the only one charged with the next reclaim (EDM_MAX_RECLAIMS).
        self.careful_to = careful_to  # also handed on by a continuation cut short
        self.careful = False
        self.read_after = (id_from or 0) - 1
        self.read_all = False
        # One route (server) per task: tasks spread over the servers by weight, and a server
        # that keeps failing or is down is left to rest while the others carry the traffic.
        self.route = delivery_selectors.choose_route(list(prepared.routes))
        self.policy = RetryPolicy(
            base_seconds=settings.EDM_RETRY_BASE_SECONDS,
            factor=settings.EDM_RETRY_FACTOR,
            max_seconds=settings.EDM_RETRY_MAX_SECONDS,
            lifetime_seconds=settings.EDM_RETRY_LIFETIME_SECONDS,
        )
        self.held: dict[int, ClaimedDelivery] = {}
        self.in_flight: dict[int, ClaimedDelivery] = {}
        self.outcomes: list[Outcome] = []
        self.render_failures: collections.deque[Outcome] = collections.deque()
        self.deadline = time.monotonic() + settings.EDM_TASK_SECONDS
        self.last_tick = time.monotonic()
        self.lease_renewed = time.monotonic()
        self.stopping = False
        self.more = False  # stopped by the time budget with work left in the range
        self.failing = False
        self.claimed = 0
        # The campaign's lists, for the claim to tell who is still subscribed (late opt-outs).
        self.list_ids = list(campaign.lists.values_list("id", flat=True))
        # Outcome writes and the next chunk's claim run on this lane; at most one write and
        # one claim ahead are pending at a time.
        self.lane = _database_lane()
        self.writing: Future[None] | None = None
        self.next_chunk: Future[tuple[list[ClaimedDelivery], bool]] | None = None

    # --- claiming ------------------------------------------------------------------------

    def _claim(self) -> bool:
        """Take the next chunk into `held`; False when there is nothing (more) to do.

        The chunk after it is claimed on the lane at once, so it is ready (on PostgreSQL)
        when this one has been handed to the pool.
        """
        if self.next_chunk is not None:
            future, self.next_chunk = self.next_chunk, None
            kept, claimed = future.result()
        else:
            kept, claimed = self._fetch_chunk()
        self.held.update((row.id, row) for row in kept)
        if claimed and not self.stopping and self.lane.background and not self.careful:
            self.next_chunk = self.lane.submit(self._fetch_chunk)
        return claimed

    def _fetch_chunk(self) -> tuple[list[ClaimedDelivery], bool]:
        """Claim a chunk: (the rows to send, whether anything was claimed at all)."""
        if time.monotonic() > self.deadline:
            self.more = True
            return [], False
        route = self.route
        limit = settings.EDM_BATCH_SIZE
        if self.careful:
            self._write_now()
            limit = 1
        elif self.lane.background and not self.claimed:
            # The task's first chunk is claimed while nothing is on the wire: a small one
            # gets the pipeline going, and the rest of the chunk is claimed on the lane
            # while those messages are out.
            limit = max(1, limit // 5)
        if route.daily_quota:
            limit = quota_take(route.key, wanted=limit, daily_quota=route.daily_quota)
            if not limit:
                logger.warning(
                    "campaign %s waits: %s used its daily quota", self.campaign_id, route.key
                )
                return [], False
        claimed = self._take(limit)
        self.claimed += len(claimed)
        kept = claims.deliveries_drop_suppressed(
            claimed, targeted=_still_targeted(self.campaign, claimed)
        )
        quota_refund(route.key, limit - len(kept), daily_quota=route.daily_quota)
        return kept, bool(claimed)

    def start(self) -> None:
        """Lease the task's range (a ranged task): refused when another live task holds part
        of it; after taking a dead task's lease over, the rows it left are sent carefully."""
        if not self.ranged:
            return
        self.lease = claims.deliveries_lease(
            campaign_id=self.campaign_id,
            id_from=self.id_from,
            id_to=self.id_to,
            holder=self.holder,
        )
        if self.lease is None:
            self.refused = True
        elif self.lease.suspects_to is not None:
            self.careful_to = max(self.lease.suspects_to, self.careful_to or 0)
            logger.warning(
                "campaign %s: a dead task's rows up to %s are sent one at a time",
                self.campaign_id,
                self.careful_to,
            )

    def _take(self, limit: int) -> list[ClaimedDelivery]:
        """Up to ``limit`` rows to send: read from the task's leased range, or claimed one by
        one. Nothing once the campaign is paused or cancelled, or the range is another's."""
        if not self.ranged:
            return claims.deliveries_claim(
                campaign_id=self.campaign_id,
                limit=limit,
                id_from=self.id_from,
                id_to=self.id_to,
                list_ids=self.list_ids,
                only_if_sending=True,
            )
        if self.lease is None or self.read_all:
            return []
        rows = claims.deliveries_read(
            lease=self.lease, after=self.read_after, limit=limit, list_ids=self.list_ids
        )
        if rows:
            self.read_after = rows[-1].id
        # Fewer than asked: nothing more in the range is due (rows are read in id order and
        # no other task takes rows from a leased range), so no read to find that out.
        self.read_all = len(rows) < limit
        return rows

    def _status(self) -> str | None:
        return Campaign.objects.filter(pk=self.campaign_id).values_list("status", flat=True).first()

    def rows(self):
        """Claimed rows, one at a time, as the pool has room for them (in the careful phase,
        up to the last row a dead task left)."""
        while not self.stopping:
            if self.careful and not self.held and self.read_after >= (self.careful_to or 0):
                return
            if not self.held and not self._claim():
                return
            if not self.held:
                continue  # the whole chunk was dropped (suppressed, unsubscribed)
            row_id = next(iter(self.held))
            row = self.held.pop(row_id)
            self.in_flight[row_id] = row
            yield row

    def envelopes(self):
        for row in self.rows():
            try:
                yield self.prepared.envelope(row)
            except (TemplateError, DeliveryError) as exc:
                self.in_flight.pop(row.id, None)
                self.render_failures.append(
                    failed_outcome(
                        delivery_id=row.id,
                        reason="template_error",
                        detail=str(exc),
                        now=timezone.now(),
                    )
                )

    # --- results -------------------------------------------------------------------------

    def record(self, result: SendResult) -> None:
        delivery_id, message_id = result.tag
        row = self.in_flight.pop(delivery_id)
        route = self.route
        if result.status != SendStatus.SENT or self.failing:
            # Redis is asked only around failures: a healthy send path pays nothing.
            record_result(route.key, result)
            self.failing = result.status != SendStatus.SENT
        if route.limiter is not None and is_slow_down(result.code, result.text):
            for key in slow_down_keys(
                route.limiter, row.email, stage=result.stage, code=result.code
            ):
                slow_down(get_redis(), key)
        self.outcomes.append(
            outcome_for_result(
                result,
                delivery_id=delivery_id,
                attempts=row.attempts + 1,
                first_attempt_at=row.first_attempt_at,
                now=timezone.now(),
                policy=self.policy,
                message_id=message_id,
            )
        )

    def _take_render_failures(self) -> None:
        """Move the outcomes of messages that could not be rendered among the others."""
        while self.render_failures:
            self.outcomes.append(self.render_failures.popleft())

    def tick(self) -> None:
        """Every EDM_FLUSH_SECONDS: write outcomes, renew leases, look at the campaign. On a
        background lane, also as soon as EDM_FLUSH_ROWS outcomes are waiting: smaller writes
        overlap the sending, and leave less to write (and to repeat after a crash) when the
        task ends."""
        self._take_render_failures()
        now = time.monotonic()
        if self.lane.background and len(self.outcomes) >= settings.EDM_FLUSH_ROWS:
            self._flush()
        if now - self.last_tick < settings.EDM_FLUSH_SECONDS:
            return
        self.last_tick = now
        self._flush()
        if now - self.lease_renewed >= settings.EDM_LEASE_SECONDS / 3:
            # Well before the lease runs out, not at every flush: each renewal rewrites rows.
            self.lease_renewed = now
            if not self.ranged:
                claims.deliveries_renew_lease([*self.held, *self.in_flight])
            elif self.lease is not None and not claims.deliveries_lease_renew(self.lease):
                # Taken back after this task stalled past its lease: its rows are another's.
                logger.warning("campaign %s: a batch lost its lease", self.campaign_id)
                self.stopping = True
        if now > self.deadline and self.held:
            self.more = True
            self.stopping = True
        if self._status() != CampaignStatus.SENDING:
            self.stopping = True

    def _flush(self) -> None:
        """Hand the waiting outcomes to the lane, unless its previous write is still running
        (they wait for the next tick then, bounded by what one process sends meanwhile)."""
        if self.writing is not None and self.writing.done():
            writing, self.writing = self.writing, None
            writing.result()  # the previous write's error, if any, stops the task
        if self.outcomes and self.writing is None:
            self.writing = self.lane.submit(self._write, self.outcomes)
            self.outcomes = []

    def _write_now(self) -> None:
        """Write every outcome recorded so far, and wait for it (the careful phase)."""
        self._take_render_failures()
        if self.writing is not None:
            writing, self.writing = self.writing, None
            writing.result()
        if self.outcomes:
            outcomes, self.outcomes = self.outcomes, []
            self.lane.submit(self._write, outcomes).result()

    def _write(self, outcomes: list[Outcome]) -> None:
        delivery_services.deliveries_record(outcomes)
        campaign_check_error_rate(campaign_id=self.campaign_id)

    def finish(self, then: Callable[[], object] | None = None) -> Future[None]:
        """Write what is left, give back what was claimed but never handed over (end the
        lease), then call ``then`` (the range's continuation, or finishing the campaign):
        all of it on the lane, so that on PostgreSQL the worker's next task starts while
        this one's last outcomes are written. The lane is one thread, so it runs after this
        task's earlier writes and claims, and before the next task's. Without ``then`` (the
        task failed, perhaps with messages on the wire) a range's lease is left to expire."""
        self._take_render_failures()
        outcomes, self.outcomes = self.outcomes, []
        writing, self.writing = self.writing, None
        next_chunk, self.next_chunk = self.next_chunk, None
        held, self.held = self.held, {}
        return self.lane.submit(self._end, outcomes, writing, next_chunk, held, then)

    def _end(
        self,
        outcomes: list[Outcome],
        writing: Future[None] | None,
        next_chunk: Future[tuple[list[ClaimedDelivery], bool]] | None,
        held: dict[int, ClaimedDelivery],
        then: Callable[[], object] | None,
    ) -> None:
        # Earlier lane work is done by now (one thread, in order): only its results are read.
        if next_chunk is not None:
            # A chunk claimed ahead and never used goes back with the held rows.
            try:
                held.update((row.id, row) for row in next_chunk.result()[0])
            except Exception:
                # Its rows stay leased until the sweeper takes them back.
                logger.exception("campaign %s: a chunk claimed ahead failed", self.campaign_id)
        failed: Exception | None = None
        if writing is not None:
            try:
                writing.result()
            except Exception as exc:  # its outcomes are lost; this task's last ones are not
                failed = exc  # raised at the end, to the caller or _log_tail_error
        written = False
        try:
            if outcomes:
                self._write(outcomes)
            written = failed is None
        finally:
            if not self.ranged:
                claims.deliveries_release(list(held))
            elif self.lease is not None and written and then is not None:
                # Rows read under the lease and never sent are pending again.
                claims.deliveries_lease_end(self.lease)
            # Otherwise (outcomes not written, or the task failed with messages on the
            # wire) the lease stays until it expires: the sweeper then takes the rows back
            # and counts their attempt, as for a dead worker, instead of sending them again
            # at once with nothing counted.
            quota_refund(self.route.key, len(held), daily_quota=self.route.daily_quota)
        if self._status() == CampaignStatus.CANCELLED:
            # Rows that came back deferred after the cancel: nothing more will be tried.
            claims.deliveries_cancel(campaign_id=self.campaign_id)
        if then is not None:
            then()
        if failed is not None:
            # The rows of those outcomes stay leased: when the lease runs out the sweeper
            # takes them back and they are sent again (at least once, never lost).
            raise failed


def _still_targeted(campaign: Campaign, claimed: list[ClaimedDelivery]) -> set[int]:
    """The claimed contacts the campaign still targets: subscribed to one of its lists, or
    matching one of its segments (checked again at send time: a late opt-out). The claim
    already tells who is subscribed on PostgreSQL; elsewhere one query does."""
    from contacts.models import Subscription

    if not claimed:
        return set()
    contact_ids = [row.contact_id for row in claimed]
    if all(row.subscribed is not None for row in claimed):
        targeted = {row.contact_id for row in claimed if row.subscribed}
    else:
        targeted = set(
            Subscription.objects.filter(
                contact_id__in=contact_ids,
                contact_list__in=campaign.lists.all(),
                status=SubscriptionStatus.SUBSCRIBED,
            ).values_list("contact_id", flat=True)
        )
    missing = [c for c in contact_ids if c not in targeted]
    for segment in campaign.segments.all() if missing else ():
        try:
            targeted.update(segment.contacts().filter(id__in=missing).values_list("id", flat=True))
        except SegmentRuleError:
            continue
    return targeted


def campaign_send_batch(
    *,
    campaign_id: int,
    id_from: int | None = None,
    id_to: int | None = None,
    wait: bool = True,
    holder: str = "",
    careful_to: int | None = None,
) -> int:
    """Claim, render, send and record the due deliveries of a campaign (in an id range).

    Claims are taken lazily, a chunk at a time, while earlier messages are still on the
    wire, so the SMTP pipeline never drains between chunks (see _BatchRun). The task stops
    after EDM_TASK_SECONDS and hands the rest of its range to a new task, so that a graceful
    worker stop is never long. With ``wait=False`` (the Celery task) it returns once every
    message has its result, and its last outcomes are written on the process's database
    lane while the next task starts; a worker process drains its lane before it exits.
    """
    from campaigns.tasks import campaign_send_batch as batch_task

    campaign = Campaign.objects.filter(pk=campaign_id).first()
    if campaign is None or campaign.status != CampaignStatus.SENDING:
        return 0
    try:
        prepared = campaign_prepare(campaign)
    except (TemplateError, DeliveryError, ValueError) as exc:
        # A campaign that cannot be prepared any more (a key or password that no longer
        # decrypts, a header made invalid by an edit) waits for a person, with the reason.
        with contextlib.suppress(CampaignStateError):
            campaign_pause(campaign_id=campaign_id, reason=f"Cannot prepare the messages: {exc}")
        return 0
    run = _BatchRun(
        campaign, prepared, id_from=id_from, id_to=id_to, holder=holder, careful_to=careful_to
    )
    limiter = run.route.limiter

    def then() -> None:
        if run.more and run.ranged:
            # A ranged task hands the rest of its range on (after ending its lease), with
            # what is left of a careful phase; the sweeper's open-ended tasks just stop (the
            # sweeper sends another while work remains).
            careful = run.careful_to is not None and run.read_after < run.careful_to
            batch_task.delay(campaign_id, id_from, id_to, *([run.careful_to] if careful else []))
        elif run.refused and _sending_with_due_rows(campaign_id, id_from, id_to):
            # Another live task holds part of the range (a resume while the paused tasks
            # were still ending, a dispatch run twice): try again once it is likely done,
            # rather than leave the rest to the sweeper's row-by-row claims.
            batch_task.apply_async(
                (campaign_id, id_from, id_to), countdown=settings.EDM_LEASE_RETRY_SECONDS
            )
        else:
            campaign_finish_if_done(campaign_id=campaign_id)

    ended = False
    try:
        run.start()
        # After a takeover, first the dead task's rows one at a time, then the rest.
        for careful in (True, False) if run.careful_to is not None else (False,):
            run.careful = careful
            for result in send_envelopes(
                run.route.config,
                run.envelopes(),
                concurrency=1 if careful else None,
                before_send=limiter.wait if limiter is not None else None,
                heartbeat=settings.EDM_FLUSH_SECONDS,
            ):
                if result is not None:
                    run.record(result)
                run.tick()
            if run.stopping:
                break
            if careful:
                run._write_now()  # the last careful row's outcome, before a chunk is read
        ended = True
    finally:
        # After an error, only what was written and given back matters: no continuation.
        tail = run.finish(then if ended else None)
        if wait or not ended:
            tail.result()
        else:
            tail.add_done_callback(_log_tail_error)
    return run.claimed


def _sending_with_due_rows(campaign_id: int, id_from: int, id_to: int) -> bool:
    return Campaign.objects.filter(
        pk=campaign_id, status=CampaignStatus.SENDING
    ).exists() and delivery_selectors.has_due_deliveries(
        campaign_id=campaign_id, now=timezone.now(), id_from=id_from, id_to=id_to
    )


def _log_tail_error(tail: Future[None]) -> None:
    if tail.exception() is not None:
        # Rows whose outcomes were not written stay leased; when the lease runs out the
        # sweeper takes them back and they are sent again: repeated, never lost.
        logger.error("a batch's last outcomes were not written", exc_info=tail.exception())


def campaign_finish_if_done(*, campaign_id: int) -> bool:
    """Mark a sending campaign sent once no delivery is pending, sending or deferred."""
    if delivery_selectors.has_open_deliveries(campaign_id=campaign_id):
        return False
    return bool(
        Campaign.objects.filter(
            pk=campaign_id, status=CampaignStatus.SENDING, dispatched_at__isnull=False
        ).update(status=CampaignStatus.SENT, finished_at=timezone.now(), updated_at=timezone.now())
    )


def campaigns_sweep() -> dict[str, int]:
    """The periodic safety net: reclaim dead leases, resume due work, start schedules, finish."""
    from campaigns.tasks import campaign_dispatch, campaign_send_batch

    # One sweep at a time (two beats, or a sweep still running when the next is due).
    lock = _sweep_key("running")
    if not claim_once(lock, seconds=60):
        return {"reclaimed": 0, "resumed": 0, "started": 0, "finished": 0}
    try:
        return _sweep(campaign_dispatch, campaign_send_batch)
    finally:
        release(lock)


def _sweep_key(suffix: str) -> str:
    # Namespaced by queue: installations (and test runs) sharing one Redis keep apart.
    return f"skylark:{settings.CELERY_TASK_DEFAULT_QUEUE}:sweep:{suffix}"


def _sweep(campaign_dispatch, campaign_send_batch) -> dict[str, int]:
    now = timezone.now()
    # A dispatch the broker lost: dispatching again is harmless (materializing is re-runnable).
    for campaign_id in Campaign.objects.filter(
        status=CampaignStatus.SENDING, dispatched_at__isnull=True
    ).values_list("id", flat=True):
        if claim_once(_sweep_key(f"dispatch:{campaign_id}"), seconds=60):
            campaign_dispatch.delay(campaign_id)
    reclaimed = claims.deliveries_reclaim_expired(now=now)
    resumed = 0
    sending = set(
        Campaign.objects.filter(status=CampaignStatus.SENDING).values_list("id", flat=True)
    )
    # Rows that came back deferred (or were reclaimed) after their campaign was cancelled.
    claims.deliveries_cancel_for(
        campaign_ids=list(
            Campaign.objects.filter(
                status=CampaignStatus.CANCELLED,
                deliveries__status__in=[DeliveryStatus.PENDING, DeliveryStatus.DEFERRED],
            )
            .values_list("id", flat=True)
            .distinct()[:100]
        )
    )
    for campaign_id in delivery_selectors.campaigns_with_due_deliveries(
        now=now, campaign_ids=sending
    ):
        if claim_once(
            _sweep_key(f"campaign:{campaign_id}"), seconds=int(settings.EDM_SWEEP_SECONDS * 2)
        ):
            campaign_send_batch.delay(campaign_id, None, None)
            resumed += 1
    started = 0
    for campaign_id in Campaign.objects.filter(
        status=CampaignStatus.SCHEDULED, scheduled_at__lte=now
    ).values_list("id", flat=True):
        try:
            campaign_send(campaign_id=campaign_id)
            started += 1
        except (CampaignStateError, CampaignValidationError) as exc:
            Campaign.objects.filter(pk=campaign_id, status=CampaignStatus.SCHEDULED).update(
                status=CampaignStatus.FAILED, status_reason=str(exc), updated_at=now
            )
    finished = sum(campaign_finish_if_done(campaign_id=cid) for cid in sending)
    return {"reclaimed": reclaimed, "resumed": resumed, "started": started, "finished": finished}


def campaign_send_test(
    *, campaign_id: int, emails: list[str], contact_id: int | None = None
) -> list[SendResult]:
    """Send the campaign as it stands to a few addresses, now, outside any statistics.

    Rendered for one contact (contact_id, else a random recipient); the subject starts with
    "[Test] ". One result per address, in order; an invalid address gets a result, not an error.
    """
    from campaigns.preflight import campaign_preview, find_contact
    from mailkit.errors import InvalidAddressError

    campaign = Campaign.objects.get(pk=campaign_id)
    contact = find_contact(str(contact_id)) if contact_id else None
    results: dict[str, SendResult] = {}
    for email in emails:
        try:
            preview = campaign_preview(
                campaign, contact=contact, to_email=email, subject_prefix="[Test] "
            )
        except InvalidAddressError as exc:
            results[email] = SendResult(email, SendStatus.PERMANENT, None, "", str(exc), "compose")
            continue
        contact = preview.contact  # the same sample contact for every address
        # The preview is signed already; tests go from the campaign's own address.
        results[email] = delivery_services.message_send_now(
            data=preview.raw,
            from_email=campaign.from_email,
            to_email=email,
            tag=email,
            sender=campaign.from_email,
            sign=False,
        )
    return [results[email] for email in emails if email in results]


def delivery_unsubscribe(
    *, delivery_id: int, source: str, ip: str = "", user_agent: str = ""
) -> bool:
    """Unsubscribe a recipient from the lists its campaign was sent to; idempotent.

    A recipient of a campaign that targets segments opts out of all campaign mail (the
    contact becomes unsubscribed): an unsubscribe link must always work.
    Each subscription changed gets a consent record. Returns True when something changed.
    """
    from campaigns.tracking import tracking_record_unsubscribe
    from contacts.models import Contact, ContactStatus, Subscription
    from contacts.signup import subscriptions_unsubscribe
    from delivery.models import Delivery, DeliveryEvent, EventKind

    delivery = Delivery.objects.select_related("campaign").filter(pk=delivery_id).first()
    if delivery is None:
        return False
    now = timezone.now()
    with transaction.atomic():
        changed = subscriptions_unsubscribe(
            Subscription.objects.filter(
                contact_id=delivery.contact_id,
                contact_list__in=delivery.campaign.lists.all(),
            ),
            source=f"campaign {delivery.campaign_id}: {source}",
            ip=ip,
            user_agent=user_agent,
        )
        member = Subscription.objects.filter(
            contact_id=delivery.contact_id, contact_list__in=delivery.campaign.lists.all()
        ).exists()
        if not member or delivery.campaign.segments.exists():
            # Reached through a segment: the person cannot leave a segment, so the opt-out
            # covers all campaign mail.
            changed += Contact.objects.filter(
                pk=delivery.contact_id, status=ContactStatus.ACTIVE
            ).update(status=ContactStatus.UNSUBSCRIBED, updated_at=now)
        if changed:
            DeliveryEvent.objects.create(
                delivery=delivery, kind=EventKind.UNSUBSCRIBE, created_at=now, detail=source
            )
            tracking_record_unsubscribe(
                delivery_id=delivery.pk, campaign_id=delivery.campaign_id, at=now
            )
    return bool(changed)


def _transition(
    campaign_id: int, *, allowed: tuple[str, ...], to: str, action: str, **fields
) -> Campaign:
    """Compare-and-set a campaign's status; a refused transition says why."""
    now = timezone.now()
    changed = Campaign.objects.filter(pk=campaign_id, status__in=allowed).update(
        status=to, updated_at=now, **fields
    )
    campaign = Campaign.objects.get(pk=campaign_id)
    if not changed:
        raise CampaignStateError(
            f"Campaign {campaign_id} is {campaign.status}: it cannot be {action}d "
            f"(only when {' or '.join(allowed)})."
        )
    return campaign


def campaign_pause(*, campaign_id: int, reason: str = "Paused by a user.") -> Campaign:
    """Stop claiming new recipients; messages already on the wire finish and are recorded."""
    return _transition(
        campaign_id,
        allowed=(CampaignStatus.SENDING,),
        to=CampaignStatus.PAUSED,
        action="pause",
        status_reason=reason,
    )


def campaign_resume(*, campaign_id: int) -> Campaign:
    """Continue a paused campaign from what was actually sent: only open deliveries remain."""
    with transaction.atomic():
        campaign = _transition(
            campaign_id,
            allowed=(CampaignStatus.PAUSED,),
            to=CampaignStatus.SENDING,
            action="resume",
            status_reason="",
        )
        from campaigns.tasks import campaign_resume as resume_task

        resume_task.delay_on_commit(campaign_id)
    return campaign


def campaign_enqueue_open(*, campaign_id: int) -> int:
    """Send what is left of a resumed campaign: batch tasks for its open deliveries (or the
    dispatch, if it never ran). Runs as a task: a large campaign has many ranges."""
    from campaigns.tasks import campaign_dispatch

    campaign = Campaign.objects.filter(pk=campaign_id).first()
    if campaign is None or campaign.status != CampaignStatus.SENDING:
        return 0
    if campaign.dispatched_at is None:
        campaign_dispatch.delay(campaign_id)
        return 0
    batches, _ = _enqueue_batches(campaign_id)
    if not batches:
        campaign_finish_if_done(campaign_id=campaign_id)
    return batches


def campaign_cancel(*, campaign_id: int) -> Campaign:
    """Cancel for good: recipients not yet sent are marked cancelled."""
    with transaction.atomic():
        campaign = _transition(
            campaign_id,
            allowed=(
                CampaignStatus.DRAFT,
                CampaignStatus.SCHEDULED,
                CampaignStatus.SENDING,
                CampaignStatus.PAUSED,
            ),
            to=CampaignStatus.CANCELLED,
            action="cancel",
            finished_at=timezone.now(),
        )
        claims.deliveries_cancel(campaign_id=campaign_id)
    return campaign


def campaign_schedule(*, campaign_id: int, at: datetime) -> Campaign:
    """Schedule a draft for a moment in the future; it is validated now and again at `at`."""
    if at <= timezone.now():
        raise CampaignValidationError(["The scheduled time is in the past."])
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign_id)
        if campaign.status not in (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED):
            raise CampaignStateError(
                f"Campaign {campaign_id} is {campaign.status}: only a draft can be scheduled."
            )
        problems = campaign_validate(campaign)
        if problems:
            raise CampaignValidationError(problems)
        campaign.status = CampaignStatus.SCHEDULED
        campaign.scheduled_at = at
        campaign.status_reason = ""
        campaign.save(update_fields=["status", "scheduled_at", "status_reason", "updated_at"])
    return campaign


def campaign_unschedule(*, campaign_id: int) -> Campaign:
    return _transition(
        campaign_id,
        allowed=(CampaignStatus.SCHEDULED,),
        to=CampaignStatus.DRAFT,
        action="unschedule",
    )


def campaign_check_error_rate(*, campaign_id: int) -> bool:
    """Pause a campaign whose first messages mostly bounce or fail; True if paused.

    Judged once per campaign, by whichever worker first sees EDM_PAUSE_SAMPLE final
    outcomes (a compare-and-set on the campaign): a bad list or a blocked sender shows in the
    first messages, and stopping then protects the sender's reputation. A person who resumes
    the campaign has the last word. Deferrals (transient errors) never count.
    """
    sample = settings.EDM_PAUSE_SAMPLE
    threshold = settings.EDM_PAUSE_ERROR_RATE
    if sample <= 0 or threshold <= 0:
        return False
    if Campaign.objects.filter(pk=campaign_id, error_rate_judged=True).exists():
        return False
    done = Delivery.objects.filter(
        campaign_id=campaign_id,
        status__in=[DeliveryStatus.SENT, DeliveryStatus.BOUNCED, DeliveryStatus.FAILED],
    )
    if done[:sample].count() < sample:
        return False
    if not Campaign.objects.filter(pk=campaign_id, error_rate_judged=False).update(
        error_rate_judged=True
    ):
        return False  # judged already, by another worker or before a resume
    first = done.order_by("id").values_list("id", flat=True)[:sample]
    bad = Delivery.objects.filter(
        id__in=list(first), status__in=[DeliveryStatus.BOUNCED, DeliveryStatus.FAILED]
    ).count()
    if bad / sample <= threshold:
        return False
    reason = (
        f"Paused automatically: {bad} of the first {sample} messages bounced or failed "
        f"({bad / sample:.0%}, above the {threshold:.0%} threshold). Check the list and the "
        "sending server's replies in Deliveries, then resume or cancel."
    )
    try:
        campaign_pause(campaign_id=campaign_id, reason=reason)
    except CampaignStateError:
        return False
    logger.warning("campaign %s paused: %d/%d bounced or failed", campaign_id, bad, sample)
    return True
