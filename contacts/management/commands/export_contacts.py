"""Export a list as CSV (UTF-8 with BOM): python manage.py export_contacts --list NAME."""

from __future__ import annotations

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from contacts.models import ContactList
from contacts.services import contacts_export


class Command(BaseCommand):
    help = "Export a contact list as CSV (formula-neutralized, UTF-8 with BOM)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--list", dest="list_name", required=True)
        parser.add_argument("--output", type=Path, help="File to write (default: stdout).")

    def handle(self, *args, **options) -> None:
        try:
            contact_list = ContactList.objects.get(name=options["list_name"])
        except ContactList.DoesNotExist:
            raise CommandError(f"no list named {options['list_name']!r}") from None
        output_path: Path | None = options["output"]
        if output_path is None:
            count = contacts_export(contact_list=contact_list, output=sys.stdout)
        else:
            with output_path.open("w", encoding="utf-8", newline="") as output:
                count = contacts_export(contact_list=contact_list, output=output)
            self.stderr.write(f"{count} contacts written to {output_path}")
