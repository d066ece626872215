"""The sweeper: the periodic safety net of the send engine."""

from __future__ import annotations

from django.conf import settings
from django.utils import timezone

from campaigns.errors import CampaignStateError, CampaignValidationError
from campaigns.models import Campaign, CampaignStatus
from campaigns.sending import claims
from campaigns.sending.progress import campaign_finish_if_done
from campaigns.services import campaign_send
from config.redis import claim_once, release
from delivery import selectors as delivery_selectors
from delivery.models import DeliveryStatus


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
