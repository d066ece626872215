"""Celery tasks of the API app; send_message is routed to EDM_PRIORITY_QUEUE."""

from __future__ import annotations

from celery import current_app, shared_task, signature
from django.conf import settings

from api import services


@shared_task(name="api.send_message")
def send_message(message_id: int) -> None:
    services.message_send(message_id=message_id)


@shared_task(name="api.sweep")
def messages_sweep() -> None:
    services.messages_sweep()


current_app.add_periodic_task(
    settings.EDM_SWEEP_SECONDS,
    signature("api.sweep", options={"expires": settings.EDM_SWEEP_SECONDS}),
    name="transactional message sweeper",
)

# The SMTP monitor's tasks live in the delivery app but are not part of its send path
# (delivery/tasks.py); Celery's autodiscovery finds them through this import.
import delivery.monitor.tasks  # noqa: E402,F401
