"""Dispatch: materialize a campaign's deliveries a range of contacts at a time and enqueue
its batch tasks by id range (also what is left of a resumed campaign)."""

from __future__ import annotations

import logging

from django.conf import settings
from django.utils import timezone

from campaigns.models import Campaign, CampaignStatus
from campaigns.sending import claims
from campaigns.sending.progress import campaign_finish_if_done
from contacts.segments import SegmentRuleError
from delivery.models import Delivery, DeliveryStatus

logger = logging.getLogger(__name__)


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
