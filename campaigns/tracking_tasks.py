"""Celery tasks of tracking and webhooks: thin interfaces over campaigns.tracking/webhooks."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from campaigns import tracking, webhooks
from config.celery import app


@shared_task(name="campaigns.tracking_flush")
def tracking_flush() -> None:
    tracking.tracking_flush()


@shared_task(name="campaigns.webhooks_deliver")
def webhooks_deliver() -> None:
    webhooks.webhooks_deliver_due()


# Registered here so the schedule lives with the tasks; add_periodic_task defers itself
# until the app is configured, whichever comes first.
app.add_periodic_task(
    settings.EDM_TRACKING_FLUSH_SECONDS,
    app.signature("campaigns.tracking_flush"),
    name="tracking flush",
)
app.add_periodic_task(
    settings.EDM_WEBHOOK_SECONDS,
    app.signature("campaigns.webhooks_deliver"),
    name="outgoing webhooks",
)
