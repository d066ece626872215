"""Schedule a draft campaign for a date and time in a time zone."""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from campaigns.errors import CampaignError
from campaigns.models import Campaign
from campaigns.selectors import campaign_report
from campaigns.services import campaign_schedule, campaign_unschedule


class Command(BaseCommand):
    help = "Schedule a campaign: --at '2026-12-01 09:00' [--tz Asia/Shanghai], or --cancel."

    def add_arguments(self, parser) -> None:
        parser.add_argument("campaign_id", type=int)
        parser.add_argument("--at", help="Local date and time, ISO 8601 (YYYY-MM-DD HH:MM).")
        parser.add_argument("--tz", default="", help="Time zone name; default: TIME_ZONE.")
        parser.add_argument("--cancel", action="store_true", help="Back to draft.")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options) -> None:
        campaign_id = options["campaign_id"]
        try:
            if options["cancel"]:
                campaign_unschedule(campaign_id=campaign_id)
            else:
                campaign_schedule(campaign_id=campaign_id, at=self._moment(options))
        except Campaign.DoesNotExist as exc:
            raise CommandError(f"No campaign {campaign_id}.") from exc
        except CampaignError as exc:
            raise CommandError(str(exc)) from exc
        report = campaign_report(campaign_id=campaign_id)
        campaign = Campaign.objects.get(pk=campaign_id)
        report["scheduled_at"] = (
            campaign.scheduled_at.isoformat() if campaign.scheduled_at else None
        )
        if options["json"]:
            self.stdout.write(json.dumps(report, ensure_ascii=False))
        else:
            self.stdout.write(
                f"Campaign {campaign_id} {report['status']}"
                + (f" for {report['scheduled_at']}" if report["status"] == "scheduled" else "")
            )

    def _moment(self, options) -> datetime:
        if not options["at"]:
            raise CommandError("Give --at, or --cancel.")
        try:
            moment = datetime.fromisoformat(options["at"])
        except ValueError as exc:
            raise CommandError(f"--at: not a date and time: {options['at']!r}") from exc
        if timezone.is_aware(moment):
            return moment
        try:
            zone = ZoneInfo(options["tz"]) if options["tz"] else timezone.get_default_timezone()
        except ZoneInfoNotFoundError as exc:
            raise CommandError(f"--tz: unknown time zone {options['tz']!r}") from exc
        return moment.replace(tzinfo=zone)
