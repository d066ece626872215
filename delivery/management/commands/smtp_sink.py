"""Run the local catch-all SMTP server (the dev mailbox)."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand

from delivery.sink import serve_until_stopped, start_sink


class Command(BaseCommand):
    help = "Run a local SMTP server that accepts every message and keeps it in the dev mailbox."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=settings.EDM_SINK_PORT)
        parser.add_argument("--dir", default=str(settings.EDM_SINK_DIR))

    def handle(self, *args, **options) -> None:
        from pathlib import Path

        controller = start_sink(Path(options["dir"]), host=options["host"], port=options["port"])
        self.stdout.write(
            f"Dev mailbox SMTP sink on {options['host']}:{options['port']} -> {options['dir']}"
        )
        serve_until_stopped(controller)
