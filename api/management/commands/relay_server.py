"""Run the SMTP submission relay for applications (AUTH with an API key, TLS required)."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from api import relay_glue
from api.relay import relay_start
from delivery.sink import serve_until_stopped


class Command(BaseCommand):
    help = (
        "SMTP submission for applications: STARTTLS on --port (and implicit TLS on "
        "--tls-port), AUTH PLAIN/LOGIN with an API key holding messages:send as password."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=settings.EDM_RELAY_HOST)
        parser.add_argument("--port", type=int, default=settings.EDM_RELAY_PORT)
        parser.add_argument("--tls-port", type=int, default=0, help="Implicit TLS (e.g. 465).")
        parser.add_argument("--tls-cert", required=True, help="PEM certificate chain.")
        parser.add_argument("--tls-key", required=True, help="PEM private key.")
        parser.add_argument("--max-bytes", type=int, default=settings.EDM_RELAY_MAX_BYTES)

    def handle(self, *args, **options) -> None:
        common = {
            "authenticate": relay_glue.authenticate,
            "accept": relay_glue.accept,
            "host": options["host"],
            "cert_file": options["tls_cert"],
            "key_file": options["tls_key"],
            "max_bytes": options["max_bytes"],
        }
        try:
            controllers = [relay_start(port=options["port"], **common)]
            if options["tls_port"]:
                controllers.append(
                    relay_start(port=options["tls_port"], implicit_tls=True, **common)
                )
        except (OSError, RuntimeError) as exc:
            raise CommandError(f"cannot start the relay: {exc}") from None
        ports = ", ".join(
            f"{c.port} ({'TLS' if c.implicit_tls else 'STARTTLS'})" for c in controllers
        )
        self.stdout.write(f"Relay on {options['host']}: {ports}")
        serve_until_stopped(*controllers)
