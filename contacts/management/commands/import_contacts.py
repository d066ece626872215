"""Import a contact file synchronously: python manage.py import_contacts FILE --list NAME."""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from contacts.errors import ContactsError
from contacts.imports import contacts_import, contacts_statistics_refresh
from contacts.models import ImportMode
from contacts.services import contact_list_get_or_create

JSON_REJECTED_ROWS = 100


class Command(BaseCommand):
    help = "Import contacts from a CSV, TSV or XLSX file into a list (created if missing)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--list", dest="list_name", help="Contact list name.")
        parser.add_argument(
            "--mode", choices=[m.value for m in ImportMode], default=ImportMode.UPSERT.value
        )
        parser.add_argument("--encoding", default="auto", help="auto or a codec name.")
        parser.add_argument("--reject-role", action="store_true", help="Reject admin@, info@ ...")
        parser.add_argument(
            "--reject-disposable", action="store_true", help="Reject throwaway-mailbox domains."
        )
        parser.add_argument("--json", action="store_true", help="Print one JSON document.")

    def handle(self, *args, **options) -> None:
        path: Path = options["file"]
        if not path.is_file():
            raise CommandError(f"no such file: {path}")
        mode = ImportMode(options["mode"])
        list_name = options["list_name"]
        if not list_name and mode != ImportMode.SUPPRESS:
            raise CommandError(f"--list is required with --mode {mode.value}")
        contact_list = contact_list_get_or_create(name=list_name) if list_name else None
        try:
            summary = contacts_import(
                source=path,
                contact_list=contact_list,
                mode=mode,
                encoding=options["encoding"],
                reject_role=options["reject_role"],
                reject_disposable=options["reject_disposable"],
                source_label=f"import_contacts {path.name}"[:100],
            )
        except ContactsError as exc:
            raise CommandError(str(exc)) from exc
        contacts_statistics_refresh(summary=summary)
        if options["json"]:
            document = {
                "file": str(path),
                "list": list_name,
                "mode": mode.value,
                "encoding": summary.encoding,
                "delimiter": summary.delimiter,
                "total": summary.total,
                "created": summary.created,
                "updated": summary.updated,
                "unchanged": summary.unchanged,
                "rejected": summary.rejected,
                "rejected_by_reason": summary.rejected_by_reason,
                "rejected_rows": [
                    {"line": line, "reason": reason, "detail": detail}
                    for line, reason, detail in summary.rejected_rows[:JSON_REJECTED_ROWS]
                ],
            }
            self.stdout.write(json.dumps(document, ensure_ascii=False))
            return
        self.stdout.write(
            f"{path.name}: encoding={summary.encoding} delimiter={summary.delimiter!r} "
            f"total={summary.total} created={summary.created} updated={summary.updated} "
            f"unchanged={summary.unchanged} rejected={summary.rejected}"
        )
        for reason, count in summary.rejected_by_reason.items():
            self.stdout.write(f"  {reason}: {count}")
        for line, reason, detail in summary.rejected_rows[:20]:
            self.stdout.write(f"  line {line}: {reason} ({detail})")
