"""Store one bounce report read on standard input (an MTA pipe transport).

Exit codes follow sysexits(3), which MTAs understand: 0 when stored (also when it matches no
delivery: it is kept for the admin), 65 for empty input, 75 (EX_TEMPFAIL) when the database
is unavailable, so that the MTA keeps the message and retries.

Postfix master.cf example:
    skylark-bounce unix - n n - - pipe
      flags=q user=skylark argv=/srv/skylark/.venv/bin/python /srv/skylark/manage.py
      ingest_bounce --recipient ${original_recipient} --sender ${sender}
"""

from __future__ import annotations

import logging
import sys

from django.core.management.base import BaseCommand
from django.db import DatabaseError

from delivery.intake.ingest import bounce_ingest
from delivery.intake.models import BounceSource

logger = logging.getLogger(__name__)

EX_OK = 0
EX_DATAERR = 65
EX_TEMPFAIL = 75


class Command(BaseCommand):
    help = "Read one bounce report on standard input and store it (exit 75 to make the MTA retry)."
    # call_command(..., stdin=<binary file>) in tests.
    stealth_options = ("stdin",)

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--recipient",
            action="append",
            default=[],
            help="The envelope recipient (the VERP address); may be repeated.",
        )
        parser.add_argument("--sender", default="", help="The envelope sender.")

    def handle(self, *args, **options) -> None:
        stream = options.get("stdin") or sys.stdin
        stream = getattr(stream, "buffer", stream)
        raw = stream.read()
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        if not raw.strip():
            self.stderr.write("ingest_bounce: empty input")
            sys.exit(EX_DATAERR)
        try:
            result = bounce_ingest(
                raw=raw,
                source=BounceSource.PIPE,
                envelope_from=options["sender"],
                envelope_rcpts=options["recipient"],
            )
        except DatabaseError as exc:
            logger.exception("ingest_bounce: database error")
            self.stderr.write(f"ingest_bounce: database error, retry later: {exc}")
            sys.exit(EX_TEMPFAIL)
        self.stdout.write(
            f"report {result.bounce_message_id}: {result.kind} {result.status}"
            + (" (duplicate)" if result.duplicate else "")
        )
