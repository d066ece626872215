"""Poll the bounce mailboxes (IMAP/POP3) once and store every new report."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from delivery.intake.models import Mailbox
from delivery.intake.poller import mailbox_poll, mailboxes_poll


class Command(BaseCommand):
    help = "Poll every enabled bounce mailbox once (or one with --mailbox) and store new reports."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--mailbox", type=int, help="Poll only this mailbox (id), even disabled."
        )

    def handle(self, *args, **options) -> None:
        if options["mailbox"] is not None:
            if not Mailbox.objects.filter(pk=options["mailbox"]).exists():
                raise CommandError(f"no mailbox with id {options['mailbox']}")
            results = [mailbox_poll(mailbox_id=options["mailbox"])]
        else:
            results = mailboxes_poll()
        failed = 0
        for result in results:
            if result.error:
                failed += 1
                self.stderr.write(f"mailbox {result.mailbox_id}: {result.error}")
            else:
                self.stdout.write(
                    f"mailbox {result.mailbox_id}: {result.fetched} fetched, {result.stored} new, "
                    f"{result.deleted} deleted"
                )
        if failed:
            raise CommandError(f"{failed} mailbox(es) could not be polled")
