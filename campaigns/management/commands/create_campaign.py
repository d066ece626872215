"""Create a campaign from files: prints the new id."""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from campaigns.errors import CampaignError
from campaigns.services import campaign_create


class Command(BaseCommand):
    help = "Create a draft campaign for one or more lists and print its id."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--name", required=True)
        parser.add_argument("--list", action="append", required=True, dest="lists")
        parser.add_argument("--subject", required=True)
        parser.add_argument("--html-file", required=True)
        parser.add_argument("--text-file")
        parser.add_argument("--from-email", required=True)
        parser.add_argument("--from-name", default="")
        parser.add_argument("--reply-to", default="")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options) -> None:
        try:
            html = Path(options["html_file"]).read_text(encoding="utf-8")
            text = (
                Path(options["text_file"]).read_text(encoding="utf-8")
                if options["text_file"]
                else ""
            )
            campaign = campaign_create(
                name=options["name"],
                list_names=options["lists"],
                subject=options["subject"],
                html=html,
                text=text,
                from_email=options["from_email"],
                from_name=options["from_name"],
                reply_to=options["reply_to"],
            )
        except (OSError, CampaignError) as exc:
            raise CommandError(str(exc)) from exc
        if options["json"]:
            self.stdout.write(json.dumps({"id": campaign.pk, "name": campaign.name}))
        else:
            self.stdout.write(str(campaign.pk))
