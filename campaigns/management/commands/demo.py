"""Headless demo: import the sample contacts, send a campaign to the dev mailbox, report."""

from __future__ import annotations

import io
import json

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from campaigns.selectors import campaign_follow
from campaigns.services import campaign_create, campaign_send
from config.processes import ProcessGroup, ensure_admin

SAMPLE = settings.BASE_DIR / "demo" / "sample_contacts.csv"
NEWSLETTER = settings.BASE_DIR / "demo" / "newsletter.html"


class Command(BaseCommand):
    help = "Import demo/sample_contacts.csv, send a campaign to the local sink, print the report."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--timeout", type=float, default=300)

    def handle(self, *args, **options) -> None:
        ensure_admin(self.stdout)
        with ProcessGroup(log_dir=settings.VAR_DIR / "log") as group:
            group.start_redis()
            group.start_manage("sink", "smtp_sink", "--port", str(settings.EDM_SINK_PORT))
            group.start_worker()
            group.wait_for_worker()
            out = io.StringIO()
            call_command("import_contacts", str(SAMPLE), "--list", "Demo", "--json", stdout=out)
            imported = json.loads(out.getvalue().strip().splitlines()[-1])
            self.stdout.write(
                f"Imported {SAMPLE.name}: {imported['created']} created, "
                f"{imported['updated']} updated, {imported['unchanged']} unchanged, "
                f"{imported['rejected']} rejected {imported['rejected_by_reason']}"
            )
            campaign = campaign_create(
                name="Spring newsletter (demo)",
                list_names=["Demo"],
                subject="{{ name | default('Friend') }}, 春季新品上市 – spring is here",
                html=NEWSLETTER.read_text(encoding="utf-8"),
                from_email=settings.EDM_DEFAULT_FROM_EMAIL,
                from_name="Skylark 演示",
            )
            campaign_send(campaign_id=campaign.pk)
            self.stdout.write(f"Sending campaign {campaign.pk} to the dev mailbox...")
            report = campaign_follow(
                campaign_id=campaign.pk,
                timeout=options["timeout"],
                on_progress=lambda line: self.stdout.write("  " + line),
            )
            report["imported"] = {
                k: imported[k] for k in ("total", "created", "updated", "unchanged", "rejected")
            }
        self.stdout.write(json.dumps(report, ensure_ascii=False))
