"""Provider webhooks (/hooks/<provider>/): Amazon SES (via SNS), SendGrid, Mailgun, Postmark.

Each provider's documented JSON is read into the classifier's `BounceReport` (one per event)
and stored through `bounce_ingest_report`, so webhooks reach the same outcome path and policy
as mailed reports. Every call is authenticated before anything is read (403 otherwise):

- Mailgun: HMAC-SHA256 of timestamp+token with `EDM_MAILGUN_SIGNING_KEY`, at most 15 minutes old,
  the token bound to the first body it came with (Mailgun signs no body).
- SendGrid: the signed event webhook's ECDSA signature with `EDM_SENDGRID_VERIFICATION_KEY`
  when set; otherwise the shared token.
- SES: SNS signatures can only be checked against a certificate fetched from AWS at run time,
  so the shared token `EDM_WEBHOOK_TOKEN` is required (`?token=` in the subscription URL).
- Postmark: the shared token, in `?token=` or as the basic-auth password of the webhook URL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from redis.exceptions import RedisError

from config.redis import get_redis
from delivery.intake.ingest import bounce_ingest_report
from delivery.intake.models import BounceSource
from mailkit.bounces import (
    BounceKind,
    BounceReason,
    BounceRecipient,
    BounceReport,
    classify_smtp_reply,
)
from mailkit.text import clean_json

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 5 * 1024 * 1024
MAILGUN_MAX_AGE_SECONDS = 15 * 60


@dataclass(frozen=True)
class ProviderEvent:
    """One provider event: its canonical bytes (kept and hashed) and the report read from it."""

    raw: bytes
    report: BounceReport


def _canonical(event: object) -> bytes:
    # Sorted keys: a provider's retry of the same event hashes the same (idempotency).
    return json.dumps(event, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def _classified(
    *, recipient: str, code: int | None, status: str, text: str, mta: str = ""
) -> BounceRecipient:
    kind, reason = classify_smtp_reply(code=code, enhanced=status, text=text)
    if kind == BounceKind.NOT_BOUNCE:
        # A failure event with no usable words: the provider says it failed.
        kind, reason = BounceKind.SOFT, BounceReason.OTHER
    return BounceRecipient(
        recipient=recipient,
        kind=kind,
        reason=reason,
        status=status,
        reply_code=code,
        diagnostic=" ".join(text.split())[:1000],
        reporting_mta=mta,
    )


def _header_value(headers: object, name: str) -> str:
    """A header from a provider's header list ([{name, value}] or [[name, value]]) or dict."""
    name = name.lower()
    if isinstance(headers, dict):
        for key, value in headers.items():
            if key.lower() == name:
                return str(value)
        return ""
    for item in headers or ():
        if isinstance(item, dict) and str(item.get("name", "")).lower() == name:
            return str(item.get("value", ""))
        if isinstance(item, list | tuple) and len(item) == 2 and str(item[0]).lower() == name:
            return str(item[1])
    return ""


def _angle(message_id: str) -> str:
    message_id = (message_id or "").strip()
    if message_id and not message_id.startswith("<"):
        return f"<{message_id}>"
    return message_id


def _complaint(email: str, diagnostic: str) -> BounceRecipient:
    """A recipient's spam complaint as a provider reports it (no feedback type given)."""
    return BounceRecipient(
        recipient=email,
        kind=BounceKind.COMPLAINT,
        reason=BounceReason.COMPLAINT,
        diagnostic=diagnostic,
    )


# --- Amazon SES (SNS) ------------------------------------------------------------------------

_SES_SOFT_PERMANENT = {"MessageTooLarge", "ContentRejected", "AttachmentRejected"}


def _ses_bounce_recipient(item: dict, bounce: dict, mta: str) -> BounceRecipient:
    """One bounced recipient of an SES bounce, classified, with SES's verdict applied."""
    bounce_type = bounce.get("bounceType", "")
    sub_type = bounce.get("bounceSubType", "")
    status = str(item.get("status", ""))
    text = str(item.get("diagnosticCode", "")).removeprefix("smtp;").strip()
    recipient = _classified(
        recipient=str(item.get("emailAddress", "")),
        code=None,
        status=status,
        text=text or f"{bounce_type} {sub_type}",
        mta=mta,
    )
    if bounce_type == "Permanent" and sub_type not in _SES_SOFT_PERMANENT:
        if recipient.kind != BounceKind.HARD and not text:
            # SES vouches for a dead address (NoEmail, Suppressed) without words.
            return BounceRecipient(
                recipient=recipient.recipient,
                kind=BounceKind.HARD,
                reason=BounceReason.UNKNOWN_USER,
                status=status,
                diagnostic=f"SES {bounce_type}/{sub_type}",
                reporting_mta=mta,
            )
    elif recipient.kind == BounceKind.HARD:
        # Transient or Undetermined: never a dead address.
        return BounceRecipient(
            recipient=recipient.recipient,
            kind=BounceKind.SOFT,
            reason=BounceReason.OTHER,
            status=status,
            diagnostic=recipient.diagnostic,
            reporting_mta=mta,
        )
    return recipient


def _ses_bounced(message: dict) -> list[BounceRecipient]:
    bounce = message.get("bounce") or {}
    mta = str(bounce.get("reportingMTA", "")).removeprefix("dns;").strip()
    return [
        _ses_bounce_recipient(item, bounce, mta) for item in bounce.get("bouncedRecipients") or []
    ]


def _ses_complained(message: dict) -> list[BounceRecipient]:
    complaint = message.get("complaint") or {}
    feedback = str(complaint.get("complaintFeedbackType", "abuse"))
    not_spam = feedback == "not-spam"
    return [
        BounceRecipient(
            recipient=str(item.get("emailAddress", "")),
            kind=BounceKind.NOT_BOUNCE if not_spam else BounceKind.COMPLAINT,
            reason=BounceReason.NOT_BOUNCE if not_spam else BounceReason.COMPLAINT,
            feedback_type=feedback,
            diagnostic=f"SES complaint ({feedback})",
        )
        for item in complaint.get("complainedRecipients") or []
    ]


# The SES notifications recorded, by type; the others (Delivery, Send, Open...) are not ours
# to record here.
SES_RECIPIENTS: dict[str, Callable[[dict], list[BounceRecipient]]] = {
    "Bounce": _ses_bounced,
    "Complaint": _ses_complained,
}


def _ses_message(payload: dict) -> object:
    """The SES notification: the SNS envelope's Message (JSON inside JSON), or the payload."""
    if payload.get("Type") != "Notification":
        return payload
    try:
        # JSON inside JSON: its escapes (\u0000) only become characters here.
        return clean_json(json.loads(payload.get("Message") or "{}"))
    except ValueError:
        return None


def _ses_events(payload: dict) -> Iterator[ProviderEvent]:
    if payload.get("Type") == "SubscriptionConfirmation":
        # Kept (ignored) so that an operator finds the SubscribeURL in the admin.
        logger.warning("SES/SNS subscription confirmation received: confirm it in the admin")
        yield ProviderEvent(_canonical(payload), BounceReport(recipients=()))
        return
    message = _ses_message(payload)
    if not isinstance(message, dict):
        return
    recipients_of = SES_RECIPIENTS.get(
        message.get("notificationType") or message.get("eventType") or ""
    )
    if recipients_of is None:
        return
    mail = message.get("mail") or {}
    headers = mail.get("headers") or []
    common = mail.get("commonHeaders") or {}
    keys = {
        "delivery_header": _header_value(headers, "X-Skylark-Delivery"),
        "original_message_id": _angle(
            _header_value(headers, "Message-ID") or common.get("messageId", "")
        ),
    }
    recipients = tuple(recipients_of(message))
    yield ProviderEvent(_canonical(message), BounceReport(recipients=recipients, **keys))


# --- SendGrid --------------------------------------------------------------------------------

_SENDGRID_DROPPED = {
    "Bounced Address": (BounceKind.HARD, BounceReason.UNKNOWN_USER),
    "Invalid": (BounceKind.HARD, BounceReason.UNKNOWN_USER),
    "Spam Reporting Address": (BounceKind.COMPLAINT, BounceReason.COMPLAINT),
}


def _sendgrid_events(payload: list) -> Iterator[ProviderEvent]:
    for event in payload if isinstance(payload, list) else []:
        if not isinstance(event, dict):
            continue
        kind = event.get("event")
        email = str(event.get("email", ""))
        status = str(event.get("status", ""))
        reason = str(event.get("reason", "") or event.get("response", ""))
        if kind == "bounce":
            recipient = _classified(recipient=email, code=None, status=status, text=reason)
            if event.get("type") == "blocked" and recipient.kind == BounceKind.HARD:
                recipient = BounceRecipient(
                    recipient=email,
                    kind=BounceKind.SOFT,
                    reason=BounceReason.POLICY_BLOCK,
                    status=status,
                    diagnostic=recipient.diagnostic,
                )
        elif kind == "dropped":
            mapped_kind, mapped_reason = _SENDGRID_DROPPED.get(
                reason, (BounceKind.SOFT, BounceReason.POLICY_BLOCK)
            )
            recipient = BounceRecipient(
                recipient=email,
                kind=mapped_kind,
                reason=mapped_reason,
                diagnostic=f"SendGrid dropped: {reason}"[:1000],
            )
        elif kind == "spamreport":
            recipient = _complaint(email, "SendGrid spam report")
        else:
            continue  # delivered, open, click...
        yield ProviderEvent(
            _canonical(event),
            BounceReport(
                recipients=(recipient,),
                # Custom args (unique_args) arrive as top-level keys of the event.
                delivery_header=str(event.get("skylark_delivery", "")),
                original_message_id=_angle(str(event.get("smtp-id", ""))),
            ),
        )


# --- Mailgun ---------------------------------------------------------------------------------


def _mailgun_events(payload: dict) -> Iterator[ProviderEvent]:
    event = payload.get("event-data") if isinstance(payload, dict) else None
    if not isinstance(event, dict):
        return
    email = str(event.get("recipient", ""))
    status_info = event.get("delivery-status") or {}
    if event.get("event") == "failed":
        code = status_info.get("code")
        text = str(status_info.get("message") or status_info.get("description") or "")
        recipient = _classified(
            recipient=email,
            code=code if isinstance(code, int) else None,
            status=str(status_info.get("enhanced-code", "")),
            text=text or str(event.get("reason", "")),
            mta=str(status_info.get("mx-host", "")),
        )
        if event.get("severity") == "temporary" and recipient.kind == BounceKind.HARD:
            recipient = BounceRecipient(
                recipient=email,
                kind=BounceKind.SOFT,
                reason=BounceReason.OTHER,
                status=recipient.status,
                reply_code=recipient.reply_code,
                diagnostic=recipient.diagnostic,
            )
    elif event.get("event") == "complained":
        recipient = _complaint(email, "Mailgun complaint")
    else:
        return
    message = event.get("message") or {}
    headers = message.get("headers") or {}
    variables = event.get("user-variables") or {}
    yield ProviderEvent(
        _canonical(event),
        BounceReport(
            recipients=(recipient,),
            delivery_header=str(
                variables.get("skylark_delivery") or _header_value(headers, "X-Skylark-Delivery")
            ),
            original_message_id=_angle(_header_value(headers, "message-id")),
        ),
    )


# --- Postmark --------------------------------------------------------------------------------

_POSTMARK_HARD = {"HardBounce", "BadEmailAddress", "ManuallyDeactivated"}
_POSTMARK_IGNORED = {"AutoResponder": BounceKind.AUTO_REPLY, "Subscribe": BounceKind.NOT_BOUNCE}


def _postmark_events(payload: dict) -> Iterator[ProviderEvent]:
    if not isinstance(payload, dict):
        return
    record_type = payload.get("RecordType")
    bounce_type = str(payload.get("Type", ""))
    email = str(payload.get("Email", ""))
    details = str(payload.get("Details") or payload.get("Description") or "")
    if record_type == "SpamComplaint" or bounce_type == "SpamComplaint":
        recipient = _complaint(email, "Postmark spam complaint")
    elif record_type == "Bounce":
        if bounce_type in _POSTMARK_IGNORED:
            kind = _POSTMARK_IGNORED[bounce_type]
            recipient = BounceRecipient(
                recipient=email,
                kind=kind,
                reason=BounceReason.AUTO_REPLY
                if kind == BounceKind.AUTO_REPLY
                else BounceReason.NOT_BOUNCE,
            )
        else:
            recipient = _classified(recipient=email, code=None, status="", text=details)
            if bounce_type in _POSTMARK_HARD and recipient.kind != BounceKind.HARD:
                recipient = BounceRecipient(
                    recipient=email,
                    kind=BounceKind.HARD,
                    reason=BounceReason.UNKNOWN_USER,
                    diagnostic=recipient.diagnostic or f"Postmark {bounce_type}",
                )
            elif bounce_type not in _POSTMARK_HARD and recipient.kind == BounceKind.HARD:
                recipient = BounceRecipient(
                    recipient=email,
                    kind=BounceKind.SOFT,
                    reason=BounceReason.OTHER,
                    diagnostic=recipient.diagnostic,
                )
    else:
        return
    metadata = payload.get("Metadata") or {}
    yield ProviderEvent(
        _canonical(payload),
        BounceReport(
            recipients=(recipient,),
            delivery_header=str(metadata.get("skylark_delivery", "")),
        ),
    )


# --- authentication --------------------------------------------------------------------------


def _token_ok(request: HttpRequest) -> bool:
    expected = settings.EDM_WEBHOOK_TOKEN
    if not expected:
        return False
    given = request.GET.get("token", "")
    auth = request.headers.get("Authorization", "")
    if not given and auth.lower().startswith("basic "):
        try:
            given = base64.b64decode(auth[6:].strip()).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            given = ""
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


def _mailgun_ok(request: HttpRequest, payload: object) -> bool:
    key = settings.EDM_MAILGUN_SIGNING_KEY
    signature = payload.get("signature") if isinstance(payload, dict) else None
    if not key or not isinstance(signature, dict):
        return False
    timestamp = str(signature.get("timestamp", ""))
    token = str(signature.get("token", ""))
    given = str(signature.get("signature", ""))
    try:
        fresh = abs(time.time() - int(timestamp)) <= MAILGUN_MAX_AGE_SECONDS
    except ValueError:
        return False
    expected = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    if not (fresh and hmac.compare_digest(expected, given)):
        return False
    return _mailgun_token_bound(token, request.body)


def _mailgun_token_bound(token: str, body: bytes) -> bool:
    """Mailgun signs the timestamp and a token, not the body: a signature seen once (a log, a
    proxy) would carry any events for 15 minutes. So the first body a token comes with is the
    only one it may ever carry: a retry (the same body) passes, a replay with another fails."""
    digest = hashlib.sha256(body).hexdigest()
    name = f"skylark:mailgun-token:{hashlib.sha256(token.encode()).hexdigest()}"
    try:
        connection = get_redis()
        # Kept longer than a signature stays fresh, so no token outlives its binding.
        if connection.set(name, digest, nx=True, ex=2 * MAILGUN_MAX_AGE_SECONDS):
            return True
        bound = connection.get(name)
    except RedisError:
        logger.warning("webhook mailgun: Redis unavailable, refusing (Mailgun retries)")
        return False
    return bound is not None and hmac.compare_digest(bound, digest.encode())


def _sendgrid_ok(request: HttpRequest, payload: object) -> bool:
    key = settings.EDM_SENDGRID_VERIFICATION_KEY
    if not key:
        return _token_ok(request)
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    signature = request.headers.get("X-Twilio-Email-Event-Webhook-Signature", "")
    timestamp = request.headers.get("X-Twilio-Email-Event-Webhook-Timestamp", "")
    if not signature or not timestamp:
        return False
    try:
        public_key = load_der_public_key(base64.b64decode(key))
        public_key.verify(
            base64.b64decode(signature),
            timestamp.encode() + request.body,
            ec.ECDSA(hashes.SHA256()),
        )
    except (InvalidSignature, ValueError, binascii.Error, TypeError):
        return False
    return True


@dataclass(frozen=True)
class Provider:
    source: str
    events: Callable[[object], Iterator[ProviderEvent]]
    authenticated: Callable[[HttpRequest, object], bool]


PROVIDERS = {
    "ses": Provider(BounceSource.WEBHOOK_SES, _ses_events, lambda r, p: _token_ok(r)),
    "sendgrid": Provider(BounceSource.WEBHOOK_SENDGRID, _sendgrid_events, _sendgrid_ok),
    "mailgun": Provider(BounceSource.WEBHOOK_MAILGUN, _mailgun_events, _mailgun_ok),
    "postmark": Provider(
        BounceSource.WEBHOOK_POSTMARK, _postmark_events, lambda r, p: _token_ok(r)
    ),
}


# --- the view --------------------------------------------------------------------------------


@csrf_exempt
@require_POST
def provider_webhook_view(request: HttpRequest, provider: str) -> HttpResponse:
    """Authenticate, read the provider's events, store each; 503 asks the provider to retry."""
    spec = PROVIDERS.get(provider)
    if spec is None:
        return JsonResponse({"error": "unknown provider"}, status=404)
    if len(request.body) > MAX_BODY_BYTES:
        return JsonResponse({"error": "too large"}, status=413)
    try:
        payload = json.loads(request.body or b"null")
    except ValueError:
        payload = None
    if not spec.authenticated(request, payload):
        logger.warning("webhook %s: authentication failed", provider)
        return JsonResponse({"error": "forbidden"}, status=403)
    if payload is None:
        return JsonResponse({"error": "invalid JSON"}, status=400)
    # A "\u0000" or a lone "\ud800" in any string would make the report unstorable.
    payload = clean_json(payload)
    stored = duplicates = 0
    try:
        for event in spec.events(payload):
            result = bounce_ingest_report(
                raw=event.raw,
                source=spec.source,
                report=event.report,
                recipient_fallback=True,
            )
            duplicates += result.duplicate
            stored += not result.duplicate
    except DatabaseError:
        logger.exception("webhook %s: database error", provider)
        return JsonResponse({"error": "try again later"}, status=503)
    return JsonResponse({"stored": stored, "duplicates": duplicates})
