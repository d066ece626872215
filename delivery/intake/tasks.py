"""Celery tasks of the bounce intake: poll the bounce mailboxes (beat runs it periodically)."""

from __future__ import annotations

from celery import current_app, shared_task, signature
from django.conf import settings

from delivery.intake.models import Mailbox
from delivery.intake.poller import mailbox_poll


@shared_task(name="delivery.poll_mailboxes")
def poll_mailboxes() -> None:
    """Fan out: one task per enabled mailbox, so a slow server delays only itself."""
    for mailbox_id in Mailbox.objects.filter(enabled=True).values_list("pk", flat=True):
        poll_mailbox.delay(mailbox_id)


@shared_task(name="delivery.poll_mailbox")
def poll_mailbox(mailbox_id: int) -> None:
    mailbox_poll(mailbox_id=mailbox_id)


# An overlapping poll is harmless (ingestion is idempotent), but polls need not pile up in the
# queue while no worker runs: each expires when the next one is due.
# Registered here rather than in config/celery.py so that the bounce intake stays one unit;
# this module is imported by autodiscovery (delivery/tasks.py) before beat reads its schedule.
current_app.add_periodic_task(
    settings.EDM_MAILBOX_POLL_SECONDS,
    signature("delivery.poll_mailboxes", options={"expires": settings.EDM_MAILBOX_POLL_SECONDS}),
    name="bounce mailbox poller",
)
