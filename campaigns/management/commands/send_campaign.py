"""Start sending a campaign; with --wait, follow it to the end and print the counts."""

from __future__ import annotations

import json
import sys

from django.core.management.base import BaseCommand, CommandError

from campaigns.errors import CampaignError
from campaigns.models import Campaign
from campaigns.selectors import campaign_follow, campaign_report
from campaigns.services import campaign_send


class Command(BaseCommand):
    help = "Send a campaign now (a Celery worker does the sending)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("campaign_id", type=int)
        parser.add_argument("--wait", action="store_true", help="Follow progress to the end.")
        parser.add_argument("--timeout", type=float, default=0, help="With --wait: give up after.")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options) -> None:
        campaign_id = options["campaign_id"]
        try:
            campaign_send(campaign_id=campaign_id)
        except Campaign.DoesNotExist as exc:
            raise CommandError(f"No campaign {campaign_id}.") from exc
        except CampaignError as exc:
            raise CommandError(str(exc)) from exc
        if options["wait"]:
            progress_stream = sys.stderr if options["json"] else self.stdout
            try:
                report = campaign_follow(
                    campaign_id=campaign_id,
                    timeout=options["timeout"],
                    on_progress=lambda line: progress_stream.write(line + "\n"),
                )
            except TimeoutError as exc:
                raise CommandError(str(exc)) from exc
        else:
            report = campaign_report(campaign_id=campaign_id)
        if options["json"]:
            self.stdout.write(json.dumps(report, ensure_ascii=False))
        else:
            self.stdout.write(
                f"Campaign {report['id']} {report['status']}: "
                + ", ".join(f"{k} {v}" for k, v in report["counts"].items() if v)
            )
