"""A local catch-all SMTP server (the dev mailbox): accepts everything, keeps it on disk.

Each message is written as an .eml file (with X-Sink-Mail-From and X-Sink-Rcpt-To
headers in front), newest kept up to a limit, so a user can look at what Skylark sent.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path

from aiosmtpd.controller import Controller

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SinkMessage:
    name: str
    path: Path
    mail_from: str
    rcpt_to: str
    subject: str
    size: int
    received_at: float


class SinkHandler:
    """aiosmtpd handler writing every message to a folder."""

    def __init__(self, folder: Path, *, keep: int = 10000) -> None:
        self.folder = folder
        self.keep = keep
        self.folder.mkdir(parents=True, exist_ok=True)
        self._counter = itertools.count()
        self._written = 0

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd hook
        stamp = f"{time.time():.6f}-{os.getpid()}-{next(self._counter):08d}"
        prefix = (
            f"X-Sink-Mail-From: {envelope.mail_from}\r\n"
            f"X-Sink-Rcpt-To: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode("utf-8", "replace")
        path = self.folder / f"{stamp}.eml"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(prefix + envelope.original_content)
        tmp.rename(path)
        self._written += 1
        if self._written % 500 == 0:
            prune(self.folder, keep=self.keep)
        return "250 2.0.0 Ok: kept in the dev mailbox"


def prune(folder: Path, *, keep: int) -> None:
    files = sorted(folder.glob("*.eml"))
    for old in files[: max(len(files) - keep, 0)]:
        old.unlink(missing_ok=True)


def start_sink(folder: Path, *, host: str = "127.0.0.1", port: int = 2525) -> Controller:
    controller = Controller(
        SinkHandler(folder),
        hostname=host,
        port=port,
        data_size_limit=50 * 1024 * 1024,
        enable_SMTPUTF8=True,
        decode_data=False,
    )
    controller.start()
    logger.info("dev mailbox SMTP sink listening on %s:%s, writing to %s", host, port, folder)
    return controller


def list_messages(folder: Path, *, limit: int = 200) -> list[SinkMessage]:
    """The newest messages first."""
    if not folder.exists():
        return []
    files = sorted(folder.glob("*.eml"), reverse=True)[:limit]
    parser = BytesHeaderParser(policy=default_policy)
    messages = []
    for path in files:
        try:
            with path.open("rb") as fh:
                headers = parser.parse(fh)
            stat = path.stat()
        except OSError:
            continue
        messages.append(
            SinkMessage(
                name=path.name,
                path=path,
                mail_from=str(headers.get("X-Sink-Mail-From", "")),
                rcpt_to=str(headers.get("X-Sink-Rcpt-To", "")),
                subject=str(headers.get("Subject", "")),
                size=stat.st_size,
                received_at=stat.st_mtime,
            )
        )
    return messages


def serve_until_stopped(*controllers) -> None:
    """Block until Ctrl-C or SIGTERM, then stop the servers (the SMTP-server commands)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for controller in controllers:
            controller.stop()
