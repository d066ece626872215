"""Celery tasks of the SMTP monitor: beat fans out one check per server every EDM_MONITOR_SECONDS."""

from __future__ import annotations

from celery import current_app, shared_task, signature
from django.conf import settings

from delivery.models import SmtpServer
from delivery.monitor import services as monitor_services


@shared_task(name="delivery.monitor_smtp")
def monitor_smtp() -> None:
    for server, _ in monitor_services.monitor_targets():
        check_smtp_server.delay(server.pk if server else None)


@shared_task(name="delivery.check_smtp_server")
def check_smtp_server(server_id: int | None) -> None:
    server = SmtpServer.objects.filter(pk=server_id).first() if server_id else None
    if server_id and server is None:
        return
    monitor_services.smtp_check_run(server=server)


current_app.add_periodic_task(
    settings.EDM_MONITOR_SECONDS,
    signature("delivery.monitor_smtp", options={"expires": settings.EDM_MONITOR_SECONDS}),
    name="SMTP server monitor",
)
