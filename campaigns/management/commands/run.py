"""Run a whole local Skylark: embedded Redis, worker, beat, dev mailbox and web server."""

from __future__ import annotations

import signal
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from config.processes import ProcessGroup, ensure_admin


class Command(BaseCommand):
    help = "Start Redis (embedded unless REDIS_URL is set), a worker, beat, the SMTP sink and the web server."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--addr", default="127.0.0.1:8000")
        parser.add_argument("--no-sink", action="store_true")

    def handle(self, *args, **options) -> None:
        # Ctrl-C and SIGTERM both stop everything (SIGINT may arrive ignored from a shell).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        ensure_admin(self.stdout)
        with ProcessGroup(log_dir=None) as group:
            group.start_redis()
            if not options["no_sink"]:
                group.start_manage("sink", "smtp_sink", "--port", str(settings.EDM_SINK_PORT))
            group.start_worker()
            group.start_manage("web", "runserver", "--noreload", options["addr"])
            self.stdout.write(
                self.style.SUCCESS(
                    f"Skylark is running: http://{options['addr']}/admin/  "
                    f"(dev mailbox: SMTP on 127.0.0.1:{settings.EDM_SINK_PORT}). Ctrl-C stops it."
                )
            )
            try:
                while True:
                    group.restart_dead(self.stdout)
                    time.sleep(1)
            except KeyboardInterrupt:
                self.stdout.write("Stopping...")
