"""Inbound SMTP server for bounce reports: accepts mail for the bounce domain only.

RCPT is accepted only at `EDM_BOUNCE_DOMAIN` (550 5.1.1 otherwise: never an open relay), the
message size is capped (552, advertised with the SIZE extension, RFC 1870), and each message
is stored through `bounce_ingest` in a worker thread before the final 250, so a report is
acknowledged only once it is in the database (451 on a database error: the sender retries).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from django.conf import settings
from django.db import DatabaseError, close_old_connections

from delivery.intake.ingest import IngestResult, bounce_ingest
from delivery.intake.models import BounceSource

logger = logging.getLogger(__name__)


def _domain_of(address: str) -> str:
    return address.strip().strip("<>").rpartition("@")[2].rstrip(".").lower()


def _ingest_in_thread(*, raw: bytes, envelope_from: str, rcpts: list[str]) -> IngestResult:
    # Each executor thread keeps its own Django connection; drop it if it went stale.
    close_old_connections()
    try:
        return bounce_ingest(
            raw=raw, source=BounceSource.SMTP, envelope_from=envelope_from, envelope_rcpts=rcpts
        )
    finally:
        close_old_connections()


class BounceHandler:
    """aiosmtpd handler: RCPT policy and storing each message."""

    def __init__(self, *, domain: str) -> None:
        self.domain = domain.strip().lower()

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if _domain_of(address) != self.domain:
            return "550 5.1.1 Recipient address rejected: this server accepts bounces only"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(
                None,
                lambda: _ingest_in_thread(
                    raw=raw,
                    envelope_from=envelope.mail_from or "",
                    rcpts=list(envelope.rcpt_tos),
                ),
            )
        except DatabaseError:
            logger.exception("bounce server: database error, asking the sender to retry")
            return "451 4.3.0 Temporary storage failure, try again later"
        logger.info(
            "bounce server stored report #%s (%s, %s)",
            result.bounce_message_id,
            result.kind,
            result.status,
        )
        return f"250 2.0.0 OK: stored as report {result.bounce_message_id}"


class BounceController(Controller):
    """aiosmtpd's threaded controller with the size cap and our handler."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        domain: str | None = None,
        max_bytes: int | None = None,
        **smtp_options: Any,
    ) -> None:
        super().__init__(
            BounceHandler(domain=domain or settings.EDM_BOUNCE_DOMAIN),
            hostname=host,
            port=port,
            data_size_limit=max_bytes or settings.EDM_BOUNCE_MAX_BYTES,
            ident="Skylark bounce receiver",
            # RFC 6531: reports about internationalized addresses arrive with SMTPUTF8.
            enable_SMTPUTF8=True,
            **smtp_options,
        )


def bounce_server_start(
    *, host: str | None = None, port: int | None = None, **options: Any
) -> BounceController:
    """Start the bounce server in its own thread; call `.stop()` on the result."""
    controller = BounceController(
        host=host or settings.EDM_BOUNCE_SERVER_HOST,
        port=port if port is not None else settings.EDM_BOUNCE_SERVER_PORT,
        **options,
    )
    controller.start()
    logger.info("bounce server listening on %s:%s", controller.hostname, controller.port)
    return controller
