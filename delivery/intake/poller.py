"""Bounce mailbox poller: read new messages over IMAP or POP3 and store each through the intake.

Remembers what it read (IMAP: UIDVALIDITY + the highest UID, RFC 3501 2.3.1.1; POP3: the
UIDLs, RFC 1939), so each message is ingested once; and `bounce_ingest` is idempotent anyway
(SHA-256 of the bytes), so a crash between storing and remembering repeats nothing. Messages
are deleted only when the mailbox says `delete_after_processing`.
"""

from __future__ import annotations

import imaplib
import ipaddress
import logging
import poplib
import re
import ssl
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from delivery.intake.ingest import bounce_ingest
from delivery.intake.models import BounceSource, Mailbox, MailboxProtocol, MailboxSecurity
from mailkit.errors import DeliveryError

logger = logging.getLogger(__name__)

TIMEOUT_SECONDS = 60
MAX_MESSAGES_PER_POLL = 500  # a backlog is worked off over several polls


class MailboxError(DeliveryError):
    """The mailbox could not be polled (connection, TLS, login, protocol)."""


@dataclass(frozen=True)
class PollResult:
    mailbox_id: int
    fetched: int
    stored: int  # new reports (not duplicates)
    deleted: int
    error: str = ""


def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=settings.EDM_MAILBOX_TLS_CA_FILE or None)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_security(mailbox: Mailbox) -> None:
    # A password in the clear is acceptable only to a server on this machine.
    if mailbox.security == MailboxSecurity.NONE and not _is_loopback(mailbox.host):
        raise MailboxError(
            f"mailbox {mailbox.name}: security 'none' is allowed only for a loopback host"
        )


# --- IMAP ------------------------------------------------------------------------------------


def _imap_connect(mailbox: Mailbox) -> imaplib.IMAP4:
    if mailbox.security == MailboxSecurity.TLS:
        client = imaplib.IMAP4_SSL(
            mailbox.host, mailbox.port, ssl_context=_tls_context(), timeout=TIMEOUT_SECONDS
        )
    else:
        client = imaplib.IMAP4(mailbox.host, mailbox.port, timeout=TIMEOUT_SECONDS)
        if mailbox.security == MailboxSecurity.STARTTLS:
            client.starttls(ssl_context=_tls_context())
    client.login(mailbox.username, mailbox.get_password())
    return client


def _check(response: tuple[str, list], what: str) -> list:
    status, data = response
    if status != "OK":
        raise MailboxError(f"IMAP {what} failed: {data!r}")
    return data


def _imap_quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _poll_imap(mailbox: Mailbox) -> PollResult:
    client = _imap_connect(mailbox)
    fetched = stored = deleted = 0
    try:
        # Read-only unless we delete: nothing (not even \Seen) changes on the server.
        _check(
            client.select(
                _imap_quote(mailbox.folder), readonly=not mailbox.delete_after_processing
            ),
            "SELECT",
        )
        values = client.response("UIDVALIDITY")[1]
        if not values or values[0] is None:
            raise MailboxError("IMAP server sent no UIDVALIDITY")
        uidvalidity = int(values[-1])
        if mailbox.uidvalidity != uidvalidity:
            # The folder was recreated: old UIDs mean nothing; read it again (idempotent).
            if mailbox.uidvalidity is not None:
                logger.warning("mailbox %s: UIDVALIDITY changed, rereading", mailbox.pk)
            mailbox.uidvalidity = uidvalidity
            mailbox.last_uid = 0
            mailbox.save(update_fields=["uidvalidity", "last_uid"])
        data = _check(client.uid("SEARCH", f"UID {mailbox.last_uid + 1}:*"), "UID SEARCH")
        # "n:*" always includes the highest UID, even below n (RFC 3501 6.4.8).
        uids = sorted(int(u) for u in b" ".join(data).split() if int(u) > mailbox.last_uid)
        for uid in uids[:MAX_MESSAGES_PER_POLL]:
            data = _check(client.uid("FETCH", str(uid), "(BODY.PEEK[])"), "UID FETCH")
            raw = next((part[1] for part in data if isinstance(part, tuple)), None)
            if raw is None:
                continue  # expunged meanwhile
            fetched += 1
            result = bounce_ingest(raw=raw, source=BounceSource.IMAP)
            stored += not result.duplicate
            mailbox.last_uid = uid
            mailbox.save(update_fields=["last_uid"])
            if mailbox.delete_after_processing:
                _check(client.uid("STORE", str(uid), "+FLAGS.SILENT", r"(\Deleted)"), "STORE")
                deleted += 1
        if deleted:
            client.expunge()
        client.close()
    finally:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            pass
    return PollResult(mailbox.pk, fetched, stored, deleted)


# --- POP3 ------------------------------------------------------------------------------------

_UIDL_LINE = re.compile(rb"^(\d+)\s+(\S+)$")


def _pop3_connect(mailbox: Mailbox) -> poplib.POP3:
    if mailbox.security == MailboxSecurity.TLS:
        client = poplib.POP3_SSL(
            mailbox.host, mailbox.port, context=_tls_context(), timeout=TIMEOUT_SECONDS
        )
    else:
        client = poplib.POP3(mailbox.host, mailbox.port, timeout=TIMEOUT_SECONDS)
        if mailbox.security == MailboxSecurity.STARTTLS:
            client.stls(context=_tls_context())
    client.user(mailbox.username)
    client.pass_(mailbox.get_password())
    return client


def _poll_pop3(mailbox: Mailbox) -> PollResult:
    client = _pop3_connect(mailbox)
    fetched = stored = deleted = 0
    committed = False
    try:
        listing = {}
        for line in client.uidl()[1]:
            match = _UIDL_LINE.match(line.strip())
            if match:
                listing[match.group(2).decode("ascii", "replace")] = int(match.group(1))
        seen = set(mailbox.seen_uidls or [])
        # Forget UIDLs no longer on the server, so the remembered set stays small.
        seen &= set(listing)
        for uidl, number in sorted(listing.items(), key=lambda item: item[1]):
            if uidl in seen:
                continue
            if fetched >= MAX_MESSAGES_PER_POLL:
                break
            raw = b"\r\n".join(client.retr(number)[1]) + b"\r\n"
            fetched += 1
            result = bounce_ingest(raw=raw, source=BounceSource.POP3)
            stored += not result.duplicate
            seen.add(uidl)
            mailbox.seen_uidls = sorted(seen)
            mailbox.save(update_fields=["seen_uidls"])
            if mailbox.delete_after_processing:
                client.dele(number)
                deleted += 1
        mailbox.seen_uidls = sorted(seen)
        mailbox.save(update_fields=["seen_uidls"])
        client.quit()  # the UPDATE state: deletions happen only now (RFC 1939 section 6)
        committed = True
    finally:
        if not committed:
            try:
                client.close()  # no QUIT: the server keeps every message
            except OSError:
                pass
    return PollResult(mailbox.pk, fetched, stored, deleted)


# --- entry point -----------------------------------------------------------------------------


def mailbox_poll(*, mailbox_id: int) -> PollResult:
    """Poll one mailbox; record the time and the last error on it. Database errors propagate."""
    mailbox = Mailbox.objects.get(pk=mailbox_id)
    try:
        _check_security(mailbox)
        if mailbox.protocol == MailboxProtocol.IMAP:
            result = _poll_imap(mailbox)
        else:
            result = _poll_pop3(mailbox)
        error = ""
    except DatabaseError:
        raise
    except (OSError, ssl.SSLError, imaplib.IMAP4.error, poplib.error_proto, MailboxError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:2000]
        logger.warning("mailbox %s: poll failed: %s", mailbox.pk, error)
        result = PollResult(mailbox.pk, 0, 0, 0, error=error)
    Mailbox.objects.filter(pk=mailbox.pk).update(last_polled_at=timezone.now(), last_error=error)
    if result.fetched:
        logger.info(
            "mailbox %s: %d fetched, %d new, %d deleted",
            mailbox.pk,
            result.fetched,
            result.stored,
            result.deleted,
        )
    return result


def mailboxes_poll() -> list[PollResult]:
    """Poll every enabled mailbox in turn (`poll_bounces` without --mailbox)."""
    return [
        mailbox_poll(mailbox_id=pk)
        for pk in Mailbox.objects.filter(enabled=True).values_list("pk", flat=True)
    ]
