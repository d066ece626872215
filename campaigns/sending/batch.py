"""The batch run: one batch task's claims, hand-over to the SMTP pool, outcomes and leases."""

from __future__ import annotations

import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future

from django.conf import settings
from django.utils import timezone

from campaigns.errors import CampaignStateError
from campaigns.models import Campaign, CampaignStatus
from campaigns.sending import claims
from campaigns.sending.claims import ClaimedDelivery
from campaigns.sending.lane import database_lane
from campaigns.sending.prepare import PreparedCampaign, campaign_prepare
from campaigns.sending.progress import campaign_check_error_rate, campaign_finish_if_done
from campaigns.services import campaign_pause
from config.redis import get_redis
from contacts.models import SubscriptionStatus
from contacts.segments import SegmentRuleError
from delivery import selectors as delivery_selectors
from delivery import services as delivery_services
from delivery.health import quota_refund, quota_take, record_result
from delivery.journal import journal_drain, journal_writer
from delivery.models import DeliveryLease, DeliveryStatus
from delivery.ratelimit import is_slow_down, slow_down, slow_down_keys
from mailkit.errors import DeliveryError, TemplateError
from mailkit.outcomes import Outcome, RetryPolicy, failed_outcome, outcome_for_result
from mailkit.runner import send_envelopes
from mailkit.smtp import SendResult, SendStatus

logger = logging.getLogger(__name__)


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
        self.lane = database_lane()
        self.writing: Future[None] | None = None
        # Each acceptance on record in Redis before its connection carries the next message.
        self.journal = journal_writer()
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
        if self.journal is not None:
            journal_drain(o.delivery_id for o in outcomes if o.status == DeliveryStatus.SENT)
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
                on_accepted=run.journal,
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
