"""`manage.py classify_bounce FILE... [--json]`: run the bounce classifier on raw messages."""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from mailkit.bounces import parse_bounce


class Command(BaseCommand):
    help = "Classify bounce messages (raw .eml files): one line per recipient found."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("files", nargs="+", metavar="FILE")
        parser.add_argument("--json", action="store_true", help="one JSON object per line")

    def handle(self, *args: object, **options: object) -> None:
        as_json = bool(options["json"])
        files = [str(name) for name in options["files"]]  # type: ignore[union-attr]
        if not as_json:
            self.stdout.write(
                f"{'file':<30} {'recipient':<36} {'kind':<12} {'reason':<20} {'status':<7} code"
            )
        for name in files:
            try:
                raw = Path(name).read_bytes()
            except OSError as exc:
                raise CommandError(f"{name}: {exc.strerror or exc}") from exc
            report = parse_bounce(raw)
            for recipient in report.recipients:
                if as_json:
                    row = {
                        "file": name,
                        "recipient": recipient.recipient,
                        "kind": recipient.kind.value,
                        "reason": recipient.reason.value,
                        "status": recipient.status,
                        "reply_code": recipient.reply_code,
                        "diagnostic": recipient.diagnostic,
                        "reporting_mta": recipient.reporting_mta,
                    }
                    if recipient.feedback_type:
                        row["feedback_type"] = recipient.feedback_type
                    self.stdout.write(json.dumps(row, ensure_ascii=False))
                else:
                    self.stdout.write(
                        f"{Path(name).name[:30]:<30} {(recipient.recipient or '-')[:36]:<36} "
                        f"{recipient.kind.value:<12} {recipient.reason.value:<20} "
                        f"{recipient.status or '-':<7} {recipient.reply_code or '-'}"
                    )
