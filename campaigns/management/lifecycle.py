"""The shared shape of the campaign lifecycle commands (pause, resume, cancel)."""

from __future__ import annotations

import json
from collections.abc import Callable

from django.core.management.base import BaseCommand, CommandError

from campaigns.errors import CampaignError
from campaigns.models import Campaign
from campaigns.selectors import campaign_report


class LifecycleCommand(BaseCommand):
    """Apply one lifecycle service to a campaign and print its report."""

    service: Callable[..., Campaign]
    done: str = "done"

    def add_arguments(self, parser) -> None:
        parser.add_argument("campaign_id", type=int)
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options) -> None:
        campaign_id = options["campaign_id"]
        try:
            type(self).service(campaign_id=campaign_id)
        except Campaign.DoesNotExist as exc:
            raise CommandError(f"No campaign {campaign_id}.") from exc
        except CampaignError as exc:
            raise CommandError(str(exc)) from exc
        report = campaign_report(campaign_id=campaign_id)
        if options["json"]:
            self.stdout.write(json.dumps(report, ensure_ascii=False))
        else:
            self.stdout.write(f"Campaign {campaign_id} {self.done}: now {report['status']}.")
