"""Progress and finish: a campaign paused when its first messages mostly fail, marked sent
when no delivery is open."""

from __future__ import annotations

import logging

from django.conf import settings
from django.utils import timezone

from campaigns.errors import CampaignStateError
from campaigns.models import Campaign, CampaignStatus
from campaigns.services import campaign_pause
from delivery import selectors as delivery_selectors
from delivery.models import Delivery, DeliveryStatus

logger = logging.getLogger(__name__)


def campaign_finish_if_done(*, campaign_id: int) -> bool:
    """Mark a sending campaign sent once no delivery is pending, sending or deferred."""
    if delivery_selectors.has_open_deliveries(campaign_id=campaign_id):
        return False
    return bool(
        Campaign.objects.filter(
            pk=campaign_id, status=CampaignStatus.SENDING, dispatched_at__isnull=False
        ).update(status=CampaignStatus.SENT, finished_at=timezone.now(), updated_at=timezone.now())
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
