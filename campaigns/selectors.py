"""Reads of the campaigns app."""

from __future__ import annotations

from typing import Any

from campaigns.models import Campaign
from delivery.selectors import delivery_counts


def campaign_report(*, campaign_id: int) -> dict[str, Any]:
    """Status, recipients and per-status delivery counts of a campaign, JSON-ready."""
    from django.utils import timezone

    campaign = Campaign.objects.get(pk=campaign_id)
    counts = delivery_counts(campaign_id=campaign_id)
    done = counts["sent"] + counts["bounced"] + counts["failed"] + counts["suppressed"]
    open_count = counts["pending"] + counts["sending"] + counts["deferred"]
    rate = eta = None
    if campaign.started_at and done:
        elapsed = ((campaign.finished_at or timezone.now()) - campaign.started_at).total_seconds()
        rate = round(done / elapsed, 1) if elapsed > 0 else None
        if rate and campaign.status == "sending":
            eta = round(open_count / rate)
    return {
        "id": campaign.pk,
        "name": campaign.name,
        "status": campaign.status,
        "status_reason": campaign.status_reason,
        "recipients": sum(counts.values()),
        "counts": counts,
        "done": done,
        "rate_per_second": rate,
        "eta_seconds": eta,
        "started_at": campaign.started_at.isoformat() if campaign.started_at else None,
        "finished_at": campaign.finished_at.isoformat() if campaign.finished_at else None,
    }


FINAL_STATUSES = ("sent", "cancelled", "failed")


def campaign_follow(
    *, campaign_id: int, on_progress=None, timeout: float = 0, interval: float = 0.5
) -> dict[str, Any]:
    """Poll a campaign until it is final or paused; call on_progress on each change.

    Returns the last report; raises TimeoutError when `timeout` (seconds, 0 = none) passes.
    """
    import time

    deadline = time.monotonic() + timeout if timeout else None
    last = None
    while True:
        report = campaign_report(campaign_id=campaign_id)
        counts = report["counts"]
        line = (
            f"{report['status']}: {report['done']}/{report['recipients']} done "
            f"(sent {counts['sent']}, deferred {counts['deferred']}, "
            f"bounced {counts['bounced']}, failed {counts['failed']})"
        )
        if report["rate_per_second"] and report["eta_seconds"] is not None:
            line += f", {report['rate_per_second']}/s, {report['eta_seconds']} s left"
        if line != last and on_progress is not None:
            on_progress(line)
        last = line
        if report["status"] in FINAL_STATUSES or report["status"] == "paused":
            return report
        if deadline and time.monotonic() > deadline:
            raise TimeoutError(f"campaign {campaign_id} still {report['status']} after {timeout}s")
        time.sleep(interval)
