"""Print a campaign's status and per-status delivery counts."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from campaigns.models import Campaign
from campaigns.selectors import campaign_report


class Command(BaseCommand):
    help = "Show a campaign's status, recipients and counts per delivery status."

    def add_arguments(self, parser) -> None:
        parser.add_argument("campaign_id", type=int)
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options) -> None:
        try:
            report = campaign_report(campaign_id=options["campaign_id"])
        except Campaign.DoesNotExist as exc:
            raise CommandError(f"No campaign {options['campaign_id']}.") from exc
        if options["json"]:
            self.stdout.write(json.dumps(report, ensure_ascii=False))
            return
        self.stdout.write(f"Campaign {report['id']}: {report['name']} [{report['status']}]")
        if report["status_reason"]:
            self.stdout.write(f"  reason: {report['status_reason']}")
        self.stdout.write(f"  recipients: {report['recipients']}")
        for status, count in report["counts"].items():
            if count:
                self.stdout.write(f"  {status:<11} {count}")
