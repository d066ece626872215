"""Bounce intake: store every report, tie it to one delivery, apply the bounce policy table.

Every intake path (bounce server, MTA pipe, mailbox poller, provider webhooks) ends here, in
`bounce_ingest` (raw mail) or `bounce_ingest_report` (a report already read from a provider's
JSON). One report maps to at most one delivery; what happens to the contact is decided by
`BouncePolicy` rows (kind -> count within a window -> action), in one place.

A transactional message (the API's, the relay's) is a delivery without a campaign: the same
keys, trust rules, recording and policy table apply to it. Keys of messages sent before it was
one are found through `legacy` (DeliveryAlias).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models.functions import Lower
from django.utils import timezone

from delivery import tokens
from delivery.intake.legacy import legacy_delivery_by_reference, legacy_delivery_by_return_path
from delivery.intake.mailto import MailtoRequest, mailto_apply, mailto_find
from delivery.intake.models import (
    RAW_KEEP_BYTES,
    BounceAction,
    BounceMessage,
    BounceMessageStatus,
    BounceOutcome,
    OutcomeKind,
    PolicyAction,
)
from delivery.intake.policy import bounce_policy_for, policy_act, recipients_with_contacts
from delivery.models import Delivery, DeliveryEvent, DeliveryStatus, EventKind
from mailkit.bounces import BounceKind, BounceReason, BounceRecipient, BounceReport, parse_bounce
from mailkit.compose import message_id_delivery
from mailkit.text import clean_text
from mailkit.verp import verp_parse

logger = logging.getLogger(__name__)

# An asynchronous report changes a delivery only when the send itself looked fine (250) or
# its result was unknown; a synchronous refusal already recorded stays as it is.
_REPORTABLE = (DeliveryStatus.SENT, DeliveryStatus.UNKNOWN)
_DIGITS = re.compile(r"^\d{1,18}$")


@dataclass(frozen=True)
class IngestResult:
    """What `bounce_ingest` did with one report."""

    bounce_message_id: int
    status: str  # BounceMessageStatus
    kind: str  # OutcomeKind of the report
    delivery_id: int | None
    matched_by: str
    action: str  # BounceAction applied to the matched recipient ("none" otherwise)
    duplicate: bool = False


@dataclass(frozen=True)
class _Match:
    delivery: Delivery | None
    matched_by: str = ""
    untrusted: str = ""  # the field that named a message without a valid tag
    # The contact the matched message's address is: a campaign delivery's own; for a
    # transactional one (no contact of its own), the contact with that address, if any.
    contact_id: int | None = None

    @property
    def found(self) -> bool:
        return self.delivery is not None

    @property
    def email(self) -> str:
        return self.delivery.email if self.delivery is not None else ""


def _matched(delivery: Delivery | None, matched_by: str) -> _Match | None:
    if delivery is None:
        return None
    [(_, contact_id)] = recipients_with_contacts([(delivery.email, delivery.contact_id)])
    return _Match(delivery, matched_by, contact_id=contact_id)


# --- entry points ----------------------------------------------------------------------------


def bounce_ingest(
    *,
    raw: bytes,
    source: str,
    envelope_from: str = "",
    envelope_rcpts: Sequence[str] = (),
    now: datetime | None = None,
) -> IngestResult:
    """Store one inbound report (raw RFC 5322 bytes), correlate it and apply the policy.

    Idempotent: the same bytes ingested again return the first result with `duplicate=True`.
    Database errors propagate (the caller retries or tells its peer to); anything else is
    recorded on the kept report with status `error`.
    """
    # A mail to the List-Unsubscribe address is a request, not a report: it is not classified.
    unsubscribe = mailto_find(raw=raw, envelope_rcpts=envelope_rcpts)
    report, error = None, ""
    if unsubscribe is None:
        try:
            report = parse_bounce(raw)
        except Exception as exc:  # the classifier promises never to raise; keep the report
            logger.exception("bounce classifier failed on a %d-byte report", len(raw))
            error = f"classifier error: {exc!r}"
    return _store(
        raw=raw,
        source=source,
        report=report,
        envelope_from=envelope_from,
        envelope_rcpts=envelope_rcpts,
        now=now,
        error=error,
        unsubscribe=unsubscribe,
    )


def bounce_ingest_report(
    *,
    raw: bytes,
    source: str,
    report: BounceReport,
    recipient_fallback: bool = False,
    now: datetime | None = None,
) -> IngestResult:
    """Store and apply a report already read from a provider's notification (webhooks).

    With `recipient_fallback`, a report that carries no Skylark key is tied to the latest
    delivery sent to its recipient: providers that authenticate their calls vouch for it.
    """
    return _store(
        raw=raw,
        source=source,
        report=report,
        now=now,
        recipient_fallback=recipient_fallback,
    )


# --- storing ---------------------------------------------------------------------------------


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _duplicate(existing: BounceMessage) -> IngestResult:
    matched = existing.delivery_id is not None
    primary = existing.outcomes.filter(delivery_id=existing.delivery_id).first()
    return IngestResult(
        bounce_message_id=existing.pk,
        status=existing.status,
        kind=existing.kind,
        delivery_id=existing.delivery_id,
        matched_by=existing.matched_by,
        action=primary.action if primary and matched else BounceAction.NONE,
        duplicate=True,
    )


def _store(
    *,
    raw: bytes,
    source: str,
    report: BounceReport | None,
    envelope_from: str = "",
    envelope_rcpts: Sequence[str] = (),
    now: datetime | None = None,
    error: str = "",
    recipient_fallback: bool = False,
    unsubscribe: MailtoRequest | None = None,
) -> IngestResult:
    now = now or timezone.now()
    digest = _digest(raw)
    existing = BounceMessage.objects.filter(sha256=digest).first()
    if existing is not None:
        return _duplicate(existing)
    kind = OutcomeKind(str(report.kind)) if report is not None else OutcomeKind.NOT_BOUNCE
    if unsubscribe is not None:
        kind = OutcomeKind.UNSUBSCRIBE
    try:
        with transaction.atomic():
            message = BounceMessage.objects.create(
                received_at=now,
                source=source,
                sha256=digest,
                raw=raw[:RAW_KEEP_BYTES],
                size=len(raw),
                # Text from the sending peer: NUL or undecodable bytes must not refuse the row.
                envelope_from=clean_text(envelope_from)[:320],
                envelope_to=clean_text(", ".join(envelope_rcpts))[:320],
                kind=kind,
                status=BounceMessageStatus.ERROR if error else BounceMessageStatus.UNMATCHED,
                summary=_summary(report) if report is not None else {},
                error=clean_text(error),
            )
            if unsubscribe is not None:
                return _result(message, _apply_unsubscribe(message, unsubscribe))
            if report is None:
                return _result(message, BounceAction.NONE)
            try:
                with transaction.atomic():
                    action = _apply(
                        message=message,
                        report=report,
                        envelope_rcpts=envelope_rcpts,
                        now=now,
                        recipient_fallback=recipient_fallback,
                    )
            except DatabaseError:
                raise
            except Exception as exc:  # a bug must not lose the report: keep it, flagged
                logger.exception("applying bounce report #%s failed", message.pk)
                message.status = BounceMessageStatus.ERROR
                message.error = f"{type(exc).__name__}: {exc}"[:2000]
                message.delivery = None
                message.matched_by = ""
                message.save(update_fields=["status", "error", "delivery", "matched_by"])
                return _result(message, BounceAction.NONE)
            return _result(message, action)
    except IntegrityError:
        # Two intakes of the same report at once: the other one stored it first.
        existing = BounceMessage.objects.filter(sha256=digest).first()
        if existing is None:
            raise
        return _duplicate(existing)


def _apply_unsubscribe(message: BounceMessage, request: MailtoRequest) -> str:
    """A mail to the List-Unsubscribe address: unsubscribe the one recipient its signed token
    names; a mail without a valid token is kept and acts on nobody."""
    done = mailto_apply(request, source=f"mailto (report #{message.pk})")
    if done is None:
        message.status = BounceMessageStatus.UNTRUSTED
        message.summary = {
            "untrusted": {"matched_by": "mailto", "why": "no valid unsubscribe token"},
            "tokens": list(request.tokens[:5]),
        }
        message.save(update_fields=["status", "summary"])
        logger.warning("unsubscribe mail #%s carries no valid token, no action", message.pk)
        return BounceAction.NONE
    message.status = BounceMessageStatus.APPLIED
    message.matched_by = "mailto"
    message.delivery_id = done.delivery_id
    message.save(update_fields=["status", "matched_by", "delivery"])
    action = BounceAction.UNSUBSCRIBED if done.changed else BounceAction.NONE
    BounceOutcome.objects.create(
        message=message,
        created_at=message.received_at,
        recipient=done.email[:320],
        kind=OutcomeKind.UNSUBSCRIBE,
        delivery_id=done.delivery_id,
        contact_id=done.contact_id,
        action=action,
    )
    logger.info("unsubscribe mail #%s applied (changed: %s)", message.pk, done.changed)
    return action


def _result(message: BounceMessage, action: str) -> IngestResult:
    return IngestResult(
        bounce_message_id=message.pk,
        status=message.status,
        kind=message.kind,
        delivery_id=message.delivery_id,
        matched_by=message.matched_by,
        action=action,
    )


def _summary(report: BounceReport) -> dict:
    return {
        "kind": str(report.kind),
        "envelope_to": report.envelope_to,
        "envid": report.envid,
        "delivery_header": report.delivery_header,
        "original_message_id": report.original_message_id,
        "recipients": [
            {key: str(value) if value is not None else None for key, value in asdict(r).items()}
            for r in report.recipients
        ],
    }


# --- correlation -----------------------------------------------------------------------------


def _delivery(delivery_id: int | None) -> Delivery | None:
    return Delivery.objects.filter(pk=delivery_id).first() if delivery_id is not None else None


def _delivery_by_return_path(address: str) -> Delivery | None:
    """The delivery a VERP return path was made for (mailkit/verp.py: the id and an HMAC
    tag), or an old transactional message's (legacy)."""
    delivery_id = verp_parse(address, secret=settings.SECRET_KEY)
    if delivery_id is None:
        delivery_id = legacy_delivery_by_return_path(address)
    return _delivery(delivery_id)


def _delivery_by_reference(value: str) -> Delivery | None:
    """The delivery a signed ENVID or X-Skylark-Delivery value names (`<id>.<tag>`, or an
    old transactional message's `tx-<public id>.<tag>`)."""
    delivery_id = tokens.delivery_from_reference(value)
    if delivery_id is None:
        delivery_id = legacy_delivery_by_reference(value)
    return _delivery(delivery_id)


def _delivery_by_message_id(message_id: str) -> Delivery | None:
    """The delivery of a Message-ID Skylark made: its last part is an HMAC tag of the rest
    (compose.make_message_id), so a report quoting it has seen the message."""
    return _delivery(message_id_delivery(message_id, secret=tokens.message_id_secret()))


def _unsigned_reference(report: BounceReport) -> str:
    """Which field of the report names one of our messages without a valid tag, if any: a
    bare delivery id (what messages carried before the tags) or a forged tag."""
    for field, value in (("envid", report.envid), ("header", report.delivery_header)):
        value = (value or "").strip().lower()
        if _DIGITS.match(value.partition(".")[0]) or value.startswith("tx-"):
            return field
    head = (report.original_message_id or "").strip().strip("<>").partition(".")[0]
    return "message_id" if _DIGITS.match(head) else ""


def _correlate(
    report: BounceReport, envelope_rcpts: Sequence[str], *, recipient_fallback: bool
) -> _Match:
    """The one delivery a report is about, by the keys of docs/bounces.md, strongest first.

    Every key is unforgeable: the VERP return path, the ENVID and our header carry an HMAC
    tag, our Message-IDs end in one. A report that names a message only by a bare id (or a
    wrong tag) is matched to nothing: `untrusted` says which field did.
    """
    # 1. VERP: the return path carries the delivery id and an HMAC tag.
    for address in (*envelope_rcpts, report.envelope_to):
        match = _matched(_delivery_by_return_path(address), "verp") if address else None
        if match is not None:
            return match
    # 2-4. Keys the report's author writes, each checked by its tag.
    for matched_by, find, key in (
        ("envid", _delivery_by_reference, report.envid),
        ("header", _delivery_by_reference, report.delivery_header),
        ("message_id", _delivery_by_message_id, report.original_message_id),
    ):
        match = _matched(find(key), matched_by) if key else None
        if match is not None:
            return match
    # 5. Provider webhooks only (the provider signed its call): the latest delivery that left
    # for the address the report names.
    named = {r.recipient.lower() for r in report.recipients if r.recipient}
    if recipient_fallback and named:
        delivery = (
            Delivery.objects.annotate(email_lower=Lower("email"))
            .filter(email_lower__in=named, sent_at__isnull=False)
            .order_by("-sent_at", "-id")
            .first()
        )
        match = _matched(delivery, "recipient")
        if match is not None:
            return match
    return _Match(None, untrusted=_unsigned_reference(report))


def _speaks_for(report: BounceReport, match: _Match, primary: BounceRecipient | None) -> str:
    """Why a matched report may not act on its message ("" when it may).

    A bounce must name the message's own recipient; only the VERP return path, one per
    message, may bounce under another name (an alias or a forward expanded it). A complaint
    (RFC 5965 reports often redact the recipient) needs only the signed key.
    """
    if primary is None:
        return "names no recipient"
    if report.kind == BounceKind.COMPLAINT or match.matched_by in ("verp", "recipient"):
        return ""
    if (primary.recipient or "").lower() != match.email.lower():
        return "names another recipient than the message's"
    return ""


# --- applying --------------------------------------------------------------------------------


def _primary(report: BounceReport, email: str) -> BounceRecipient | None:
    """The recipient entry that speaks for the matched message (sent to `email`)."""
    if not email or not report.recipients:
        return None
    email = email.lower()
    for recipient in report.recipients:
        if (recipient.recipient or "").lower() == email:
            return recipient
    # With VERP one message has one recipient; an alias may have expanded it to another name.
    return report.recipients[0]


def _apply(
    *,
    message: BounceMessage,
    report: BounceReport,
    envelope_rcpts: Sequence[str],
    now: datetime,
    recipient_fallback: bool,
) -> str:
    """Correlate a stored report, decide whether it may act, record its outcomes, apply."""
    ignored = report.kind in (BounceKind.AUTO_REPLY, BounceKind.NOT_BOUNCE)
    match, primary = _trusted_match(
        message,
        report,
        _correlate(report, envelope_rcpts, recipient_fallback=recipient_fallback),
        ignored=ignored,
    )
    outcomes = [
        _outcome(message, recipient, match if recipient is primary else None, now, ignored)
        for recipient in report.recipients
    ]
    primary_outcome = next(
        (o for o, r in zip(outcomes, report.recipients, strict=True) if r is primary), None
    )
    message.delivery = match.delivery
    message.matched_by = match.matched_by
    message.status = _report_status(message, match, primary_outcome, ignored=ignored)
    action = BounceAction.NONE
    if message.status == BounceMessageStatus.APPLIED:
        action = _apply_outcome(outcome=primary_outcome, match=match, now=now)
        primary_outcome.action = action
    BounceOutcome.objects.bulk_create(outcomes)
    if primary_outcome is not None and primary_outcome.counted:
        action = _apply_policy(outcome=primary_outcome, match=match, now=now)
        BounceOutcome.objects.filter(pk=primary_outcome.pk).update(action=action)
    message.save(update_fields=["delivery", "matched_by", "status", "summary"])
    return action


def _trusted_match(
    message: BounceMessage, report: BounceReport, match: _Match, *, ignored: bool
) -> tuple[_Match, BounceRecipient | None]:
    """The match and its primary recipient if the report may act on them; else no match,
    with `summary.untrusted` saying which field named which delivery and why not."""
    primary = _primary(report, match.email)
    refusal = _speaks_for(report, match, primary) if match.found and not ignored else ""
    if refusal:
        # Stored and shown, acts on nobody: the report is about a message it cannot prove
        # to speak for.
        message.summary["untrusted"] = {
            "matched_by": match.matched_by,
            "delivery": match.delivery.pk if match.delivery is not None else None,
            "why": refusal,
        }
        return _Match(None, untrusted=match.matched_by), None
    if match.untrusted and not ignored:
        message.summary["untrusted"] = {
            "matched_by": match.untrusted,
            "why": "names a message without a valid signature",
        }
    return match, primary


def _outcome(
    message: BounceMessage,
    recipient: BounceRecipient,
    match: _Match | None,
    now: datetime,
    ignored: bool,
) -> BounceOutcome:
    """One recipient's outcome; `match` only for the primary recipient of a matched report.

    The primary outcome is the matched message's, under its address: under the name a VERP
    report wrote (anyone's) it would count towards that person's policy. Another recipient
    of a multi-recipient report is kept, tied to nothing.
    """
    found = match is not None and match.found
    named = match.email if found else recipient.recipient
    return BounceOutcome(
        message=message,
        created_at=now,
        recipient=(named or "")[:320],
        kind=str(recipient.kind),
        reason=str(recipient.reason),
        enhanced_status=recipient.status[:16],
        smtp_code=recipient.reply_code,
        diagnostic=recipient.diagnostic[:2000],
        reporting_mta=recipient.reporting_mta[:255],
        delivery=match.delivery if match is not None else None,
        contact_id=match.contact_id if match is not None else None,
        action=BounceAction.NONE if ignored or match is not None else BounceAction.UNMATCHED,
    )


def _report_status(
    message: BounceMessage,
    match: _Match,
    primary_outcome: BounceOutcome | None,
    *,
    ignored: bool,
) -> str:
    """What became of the report: ignored, untrusted, unmatched or applied (logged)."""
    if ignored:
        return BounceMessageStatus.IGNORED
    if match.untrusted:
        logger.warning(
            "bounce report #%s: untrusted reference (%s), no action",
            message.pk,
            message.summary["untrusted"]["why"],
        )
        return BounceMessageStatus.UNTRUSTED
    if not match.found or primary_outcome is None:
        logger.info("bounce report #%s matches no delivery", message.pk)
        return BounceMessageStatus.UNMATCHED
    return BounceMessageStatus.APPLIED


def _effect(outcome: BounceOutcome) -> tuple[str, str | None, bool] | None:
    """(event kind, new status or None, counted by the policy) for an outcome, or None."""
    if outcome.kind == OutcomeKind.HARD:
        return EventKind.BOUNCED, DeliveryStatus.BOUNCED, True
    if outcome.kind == OutcomeKind.SOFT and outcome.reason == BounceReason.DELAYED:
        # RFC 3464 "Action: delayed": the remote MTA is still trying; not a failure yet.
        return EventKind.DEFERRED, None, False
    if outcome.kind == OutcomeKind.SOFT:
        # The message was lost after a 250; the address may well be fine.
        return EventKind.FAILED, DeliveryStatus.FAILED, True
    if outcome.kind == OutcomeKind.COMPLAINT:
        # It was delivered: the status stays, the complaint is an event.
        return EventKind.COMPLAINT, None, True
    return None


def _apply_outcome(*, outcome: BounceOutcome, match: _Match, now: datetime) -> str:
    """Write the message's side: status (compare-and-set) and one event. Sets `counted`."""
    effect = _effect(outcome)
    if effect is None:
        return BounceAction.NONE
    event_kind, new_status, outcome.counted = effect
    delivery = match.delivery
    if new_status is not None:
        Delivery.objects.filter(pk=delivery.pk, status__in=_REPORTABLE).update(
            status=new_status,
            reason=outcome.reason[:40],
            smtp_code=outcome.smtp_code,
            enhanced_status=outcome.enhanced_status,
            smtp_reply=outcome.diagnostic,
            updated_at=now,
        )
    DeliveryEvent.objects.create(
        delivery=delivery,
        kind=event_kind,
        created_at=now,
        smtp_code=outcome.smtp_code,
        enhanced_status=outcome.enhanced_status,
        detail=outcome.diagnostic,
        data={
            "source": "bounce report",
            "bounce_message": outcome.message_id,
            "kind": outcome.kind,
            "reason": outcome.reason,
            "status": outcome.enhanced_status,
            "reporting_mta": outcome.reporting_mta,
        },
    )
    return BounceAction.RECORDED


def _apply_policy(*, outcome: BounceOutcome, match: _Match, now: datetime) -> str:
    """The policy table: count this person's reports of the kind, act at the threshold.

    A person is the contact when there is one; a transactional recipient with no contact is
    counted by the address of the deliveries its reports matched.
    """
    policy = bounce_policy_for(kind=outcome.kind)
    if policy is None or policy.action == PolicyAction.NONE:
        return BounceAction.RECORDED
    counted = BounceOutcome.objects.filter(kind=outcome.kind, counted=True)
    if match.contact_id is not None:
        counted = counted.filter(contact_id=match.contact_id)
    else:
        counted = counted.filter(contact__isnull=True).annotate(recipient_lower=Lower("recipient"))
        counted = counted.filter(recipient_lower=match.email.lower())
    if policy.window_days:
        counted = counted.filter(created_at__gte=now - timedelta(days=policy.window_days))
    # Distinct messages: two reports about one message (a DSN and a webhook) count once. This
    # report's outcome is already saved, so it is among them.
    reports = counted.values("delivery_id").distinct().count()
    if reports < policy.count:
        return BounceAction.COUNTED
    action, ended = policy_act(
        policy=policy,
        recipients=[(match.email, match.contact_id)],
        source=f"bounce policy ({outcome.kind}, report #{outcome.message_id})",
        now=now,
    )
    if ended:
        DeliveryEvent.objects.create(
            delivery=match.delivery,
            kind=EventKind.UNSUBSCRIBE,
            created_at=now,
            detail=f"bounce policy: {policy}",
        )
    return action


__all__ = [
    "IngestResult",
    "bounce_ingest",
    "bounce_ingest_report",
    "bounce_policy_for",
]
