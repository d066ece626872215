"""Check one SMTP server now: `manage.py smtp_check NAME|ID|smtp://... [--json] [--record]`."""

from __future__ import annotations

import asyncio
import json as jsonlib

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from delivery.models import SmtpServer
from delivery.monitor import services as monitor_services
from delivery.monitor.checks import check_smtp, findings_for
from mailkit.errors import SmtpConfigError


class Command(BaseCommand):
    help = "Check an SMTP server (latency, extensions, TLS, certificate, AUTH) and print it."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "server", nargs="?", default="", help="SmtpServer name or id, or an smtp:// URL."
        )
        parser.add_argument("--json", action="store_true", help="Print the result as JSON.")
        parser.add_argument("--record", action="store_true", help="Store it in the history.")

    def handle(self, *args, server: str, record: bool, **options) -> None:
        row = None
        try:
            if server.startswith(("smtp://", "smtps://")):
                target = monitor_services.target_for_url(server)
            elif server:
                row = SmtpServer.objects.filter(name=server).first()
                if row is None and server.isdigit():
                    row = SmtpServer.objects.filter(pk=int(server)).first()
                if row is None:
                    raise CommandError(f"no SMTP server named {server!r}")
                target = monitor_services.target_for_server(row)
            else:
                target = monitor_services.target_for_url(settings.EDM_SMTP_URL)
        except SmtpConfigError as exc:
            raise CommandError(str(exc)) from None
        result = asyncio.run(check_smtp(target))
        findings = findings_for(
            result, warn_days=settings.EDM_CERT_WARN_DAYS, credentials=bool(target.username)
        )
        health = monitor_services.health_for(findings)
        if record:
            monitor_services.smtp_check_record(
                server=row, target=target, result=result, now=timezone.now()
            )
        if options["json"]:
            self._print_json(result, findings, health)
        else:
            self._print_text(result, findings, health)
        if not result.up:
            raise SystemExit(2)

    def _print_json(self, result, findings, health) -> None:
        payload = {"health": health, **result.as_dict(), "findings": [f.__dict__ for f in findings]}
        self.stdout.write(jsonlib.dumps(payload, indent=2))

    def _print_text(self, result, findings, health) -> None:
        out = self.stdout.write
        out(f"{result.host}:{result.port} ({result.security}): {health.upper()}")
        if not result.up:
            out(f"  error: {result.error}")
        out(
            f"  connect {result.connect_ms} ms, greeting {result.greeting_ms} ms, "
            f"total {result.total_ms} ms"
        )
        if result.banner:
            out(f"  banner: {result.banner}")
        out(
            f"  SIZE {result.size_limit} PIPELINING {result.pipelining} 8BITMIME "
            f"{result.eightbitmime} SMTPUTF8 {result.smtputf8} DSN {result.dsn} STARTTLS "
            f"{result.starttls_offered} AUTH {' '.join(result.auth_mechanisms) or '-'}"
        )
        if result.tls:
            out(f"  TLS {result.tls_version} {result.tls_cipher}")
            out(
                f"  certificate {result.cert_subject} by {result.cert_issuer}, names "
                f"{', '.join(result.cert_names)}; expires {result.cert_not_after} "
                f"({result.cert_days_left} days); host match {result.cert_hostname_match}; "
                f"chain verified {result.cert_verified} {result.cert_error}"
            )
        if result.auth_ok is not None or result.auth_error:
            out(f"  AUTH ok {result.auth_ok} {result.auth_error}")
        for finding in findings:
            out(f"  [{finding.severity}] {finding.code}: {finding.message}")
