"""Reads of the campaigns app."""

from __future__ import annotations

from typing import Any

from campaigns.models import Campaign
from delivery.selectors import delivery_counts


def campaign_report(*, campaign_id: int) -> dict[str, Any]:
    """Status, recipients and per-status delivery counts of a campaign, JSON-ready."""
    campaign = Campaign.objects.get(pk=campaign_id)
    counts = delivery_counts(campaign_id=campaign_id)
    return {
        "id": campaign.pk,
        "name": campaign.name,
        "status": campaign.status,
        "status_reason": campaign.status_reason,
        "recipients": sum(counts.values()),
        "counts": counts,
        "started_at": campaign.started_at.isoformat() if campaign.started_at else None,
        "finished_at": campaign.finished_at.isoformat() if campaign.finished_at else None,
    }


FINAL_STATUSES = ("sent", "cancelled", "failed")


def campaign_follow(
    *, campaign_id: int, on_progress=None, timeout: float = 0, interval: float = 0.5
) -> dict[str, Any]:
    """Poll a campaign until it reaches a final status; call on_progress on each change.

    Returns the last report; raises TimeoutError when `timeout` (seconds, 0 = none) passes.
    """
    import time

    deadline = time.monotonic() + timeout if timeout else None
    last = None
    while True:
        report = campaign_report(campaign_id=campaign_id)
        counts = report["counts"]
        done = counts["sent"] + counts["bounced"] + counts["failed"] + counts["suppressed"]
        line = (
            f"{report['status']}: {done}/{report['recipients']} done "
            f"(sent {counts['sent']}, deferred {counts['deferred']}, "
            f"bounced {counts['bounced']}, failed {counts['failed']})"
        )
        if line != last and on_progress is not None:
            on_progress(line)
        last = line
        if report["status"] in FINAL_STATUSES:
            return report
        if deadline and time.monotonic() > deadline:
            raise TimeoutError(f"campaign {campaign_id} still {report['status']} after {timeout}s")
        time.sleep(interval)
