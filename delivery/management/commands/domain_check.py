"""Check a sender domain's SPF, DKIM and DMARC: `manage.py domain_check DOMAIN [--json]`."""

from __future__ import annotations

import json

from django.conf import settings
from django.core.management.base import BaseCommand

from delivery.models import DkimKey
from delivery.monitor.domaincheck import DkimSelector, check_domain, make_resolver


class Command(BaseCommand):
    help = (
        "Look up SPF, DKIM (Skylark's selectors) and DMARC of a From domain; say what to publish."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("domain")
        parser.add_argument("--selector", action="append", default=[], help="Extra DKIM selector.")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, domain: str, selector: list[str], **options) -> None:
        domain = domain.strip().lower()
        selectors = [
            DkimSelector(selector=k.selector, algorithm=k.algorithm, public_key_b64=k.public_key)
            for k in DkimKey.objects.filter(domain=domain, enabled=True)
        ]
        selectors += [DkimSelector(selector=s) for s in selector]
        report = check_domain(
            domain, selectors=selectors, resolver=make_resolver(settings.EDM_DNS_SERVERS)
        )
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2))
        else:
            self.stdout.write(f"{report.domain}: {'OK' if report.ok else 'PROBLEMS'}")
            for finding in report.findings:
                self.stdout.write(f"  [{finding.severity}] {finding.record}: {finding.message}")
                if finding.publish_name:
                    self.stdout.write(
                        f'      publish TXT {finding.publish_name}  "{finding.publish_value}"'
                    )
        if not report.ok:
            raise SystemExit(1)
