"""Run the inbound SMTP server that receives bounce reports for EDM_BOUNCE_DOMAIN."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand

from delivery.intake.server import bounce_server_start
from delivery.sink import serve_until_stopped


class Command(BaseCommand):
    help = (
        "Receive bounce reports over SMTP (RCPT only at EDM_BOUNCE_DOMAIN) and store each "
        "one through the bounce intake."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=settings.EDM_BOUNCE_SERVER_HOST)
        parser.add_argument("--port", type=int, default=settings.EDM_BOUNCE_SERVER_PORT)
        parser.add_argument(
            "--max-bytes", type=int, default=settings.EDM_BOUNCE_MAX_BYTES, help="552 above this."
        )

    def handle(self, *args, **options) -> None:
        controller = bounce_server_start(
            host=options["host"], port=options["port"], max_bytes=options["max_bytes"]
        )
        self.stdout.write(
            f"Bounce server on {options['host']}:{options['port']} for "
            f"@{settings.EDM_BOUNCE_DOMAIN} (max {options['max_bytes']} bytes)"
        )
        serve_until_stopped(controller)
