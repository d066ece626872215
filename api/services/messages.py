"""Transactional messages: accepting, composing and storing them, sending, recording, the sweeper."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, models, transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone
from kombu import Producer

from api import correlation
from api.errors import IdempotencyConflict, MessageRejected
from api.models import (
    ApiKey,
    Category,
    MessageEvent,
    MessageEventKind,
    MessageSource,
    MessageStatus,
    TransactionalMessage,
)
from api.selectors import UNSUBSCRIBE_TOKEN_PURPOSE
from api.services.contacts import contacts_by_address
from api.services.keys import sender_check
from campaigns.models import Template
from contacts.models import (
    ContactStatus,
    Suppression,
    SuppressionReason,
    SuppressionScope,
)
from delivery import tokens
from delivery.intake.policy import synchronous_bounces_apply
from delivery.services import message_send_now
from delivery.tokens import make_token
from mailkit.compose import Attachment, Composer, MessageSpec, make_message_id
from mailkit.errors import DeliveryError, TemplateError
from mailkit.outcomes import Outcome, RetryPolicy, outcome_for_result
from mailkit.render import (
    CompiledTemplates,
    TemplateSource,
    compile_templates,
    contact_context,
    render_content,
)

logger = logging.getLogger(__name__)

# Statuses that stop a message however it is asked for again.
FINAL_STATUSES = (
    MessageStatus.SENT,
    MessageStatus.BOUNCED,
    MessageStatus.FAILED,
    MessageStatus.SUPPRESSED,
)
# Suppressions that stop transactional mail too: the address is dead or its owner complained.
ALWAYS_SUPPRESSED = (SuppressionReason.HARD_BOUNCE, SuppressionReason.COMPLAINT)
LEASE_SECONDS = 120


# -- accepting messages ----------------------------------------------------------------------


@dataclass(frozen=True)
class AttachmentIn:
    filename: str
    content_type: str
    content_base64: str
    content_id: str = ""


@dataclass(frozen=True)
class SendRequest:
    """A transactional send as the API receives it (already schema-validated)."""

    to_email: str
    to_name: str = ""
    from_email: str = ""
    from_name: str = ""
    reply_to: str = ""
    template: str = ""  # a campaigns.Template id or name
    subject: str = ""
    html: str = ""
    text: str = ""
    data: Mapping[str, object] = field(default_factory=dict)
    attachments: tuple[AttachmentIn, ...] = ()
    tags: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    category: str = Category.TRANSACTIONAL

    def fingerprint(self) -> str:
        """SHA-256 of the request, to tell a retry from a different request with the same key."""
        payload = json.dumps(
            {
                **{k: v for k, v in self.__dict__.items() if k != "attachments"},
                "attachments": [a.__dict__ for a in self.attachments],
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()


# Headers an application may not set: the envelope and identity of the message are Skylark's.
_FORBIDDEN_HEADER = re.compile(
    r"(from|to|cc|bcc|sender|reply-to|return-path|received|subject|date|message-id|"
    r"mime-version|content-.*|resent-.*|dkim-signature|arc-.*|authentication-results|"
    r"list-.*|x-skylark-.*)",
    re.I,
)
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")
_TAG = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _extra_headers(request: SendRequest) -> tuple[tuple[str, str], ...]:
    headers: list[tuple[str, str]] = []
    for name, value in request.headers.items():
        if not _HEADER_NAME.fullmatch(name) or _FORBIDDEN_HEADER.fullmatch(name):
            raise MessageRejected(f"header not allowed: {name!r}")
        headers.append((name, str(value)))
    if request.tags:
        bad = [t for t in request.tags if not _TAG.fullmatch(t)]
        if bad:
            raise MessageRejected(f"invalid tags: {bad!r} (letters, digits, _ . : -)")
        headers.append(("X-Skylark-Tags", ", ".join(request.tags)))
    return tuple(headers)


@functools.lru_cache(maxsize=256)
def _compiled_inline(subject: str, html: str, text: str) -> CompiledTemplates:
    return compile_templates(TemplateSource(subject=subject, html=html, text=text))


@functools.lru_cache(maxsize=256)
def _compiled_template(template_id: int, updated_at: datetime) -> CompiledTemplates:
    template = Template.objects.get(pk=template_id)
    return compile_templates(
        TemplateSource(subject=template.subject, html=template.html, text=template.text)
    )


def _resolve_template(request: SendRequest) -> tuple[Template | None, CompiledTemplates]:
    if request.template:
        lookup = Q(name=request.template)
        if request.template.isdigit():
            lookup |= Q(pk=int(request.template))
        template = Template.objects.filter(lookup).only("id", "updated_at").first()
        if template is None:
            raise MessageRejected(f"no template {request.template!r}")
        return template, _compiled_template(template.pk, template.updated_at)
    if not request.subject or not (request.html or request.text):
        raise MessageRejected("give a template, or a subject and html and/or text")
    # A text-only message still gets an HTML part (the composer always sends both).
    html = request.html or f"<pre>{request.text}</pre>"
    return None, _compiled_inline(request.subject, html, request.text)


def _attachments(request: SendRequest) -> list[Attachment]:
    attachments, total = [], 0
    for item in request.attachments:
        try:
            data = base64.b64decode(item.content_base64, validate=True)
        except (binascii.Error, ValueError):
            raise MessageRejected(f"attachment {item.filename!r} is not valid base64") from None
        total += len(data)
        attachments.append(
            Attachment(
                filename=item.filename,
                content_type=item.content_type,
                data=data,
                content_id=item.content_id,
            )
        )
    if total > settings.EDM_API_MAX_ATTACHMENT_BYTES:
        raise MessageRejected(
            f"attachments exceed {settings.EDM_API_MAX_ATTACHMENT_BYTES} bytes in total"
        )
    return attachments


def message_unsubscribe_url(public_id: uuid.UUID) -> str:
    """The one-click unsubscribe URL of a marketing message (RFC 8058), signed like campaigns'."""
    token = make_token(UNSUBSCRIBE_TOKEN_PURPOSE, public_id.int)
    return f"{settings.EDM_PUBLIC_URL}{reverse('message_unsubscribe', args=[token])}"


def _compose(
    request: SendRequest, *, public_id: uuid.UUID
) -> tuple[Template | None, str, str, bytes]:
    """(template, subject, Message-ID, MIME bytes); MessageRejected on any content problem.

    A marketing message carries List-Unsubscribe (its https one-click URL and a mailto) and
    List-Unsubscribe-Post like a campaign's (RFC 2369, RFC 8058), and its templates see
    `{{ unsubscribe_url }}`; a transactional one carries neither: there is nothing to leave.
    """
    try:
        template, compiled = _resolve_template(request)
    except TemplateError as exc:
        raise MessageRejected(f"template error: {exc}") from exc
    from_email = request.from_email or settings.EDM_DEFAULT_FROM_EMAIL
    try:
        composer = Composer(
            MessageSpec(
                from_email=from_email,
                from_name=request.from_name,
                reply_to=request.reply_to,
                extra_headers=_extra_headers(request),
            )
        )
        unsubscribe_url = unsubscribe_mailto = ""
        if request.category == Category.MARKETING:
            unsubscribe_url = message_unsubscribe_url(public_id)
            unsubscribe_mailto = tokens.unsubscribe_mailto(
                delivery_id=public_id.int, purpose=correlation.UNSUBSCRIBE_MAILTO_PURPOSE
            )
        context = contact_context(
            email=request.to_email,
            name=request.to_name,
            attributes=dict(request.data),
            extra={"unsubscribe_url": unsubscribe_url} if unsubscribe_url else None,
        )
        content = render_content(compiled, context)
        message_id = make_message_id(domain=composer.domain)
        raw = composer.compose(
            to_email=request.to_email,
            to_name=request.to_name,
            content=content,
            message_id=message_id,
            unsubscribe_url=unsubscribe_url,
            unsubscribe_mailto=unsubscribe_mailto,
            attachments=_attachments(request),
        )
    except (TemplateError, DeliveryError) as exc:
        raise MessageRejected(str(exc)) from exc
    return template, content.subject, message_id, raw


def message_accept(
    *, api_key: ApiKey, request: SendRequest, idempotency_key: str = ""
) -> tuple[TransactionalMessage, bool]:
    """Compose and store a message, enqueue it on the priority queue after commit.

    Returns (message, created). A repeated Idempotency-Key returns the first message and
    sends nothing (the unique constraint decides, so concurrent repeats are safe too); the
    same key with a different request raises IdempotencyConflict; a From domain the key may
    not use raises SenderNotAllowed.
    """
    # Before anything is looked up or stored: a key that may not use this From gets nothing.
    sender_check(
        api_key=api_key, from_emails=[request.from_email or settings.EDM_DEFAULT_FROM_EMAIL]
    )
    fingerprint = request.fingerprint() if idempotency_key else ""
    if idempotency_key:
        existing = _idempotent_message(api_key, idempotency_key, fingerprint)
        if existing is not None:
            return existing, False
    # Known before the INSERT: the unsubscribe link and the correlation header carry it.
    public_id = uuid.uuid4()
    template, subject, message_id, raw = _compose(request, public_id=public_id)
    raw = correlation.header_line(public_id) + raw
    message = TransactionalMessage(
        public_id=public_id,
        api_key=api_key,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        source=MessageSource.API,
        category=request.category,
        template=template,
        from_email=request.from_email or settings.EDM_DEFAULT_FROM_EMAIL,
        to_email=request.to_email,
        subject=subject[:998],
        tags=list(request.tags),
        message_id=message_id,
        raw=raw,
    )
    try:
        _insert(message)
        message_enqueue(message=message)
    except IntegrityError:
        if not idempotency_key:
            raise
        existing = _idempotent_message(api_key, idempotency_key, fingerprint)
        if existing is None:
            raise
        return existing, False
    return message, True


def _idempotent_message(
    api_key: ApiKey, idempotency_key: str, fingerprint: str
) -> TransactionalMessage | None:
    existing = TransactionalMessage.objects.filter(
        api_key=api_key, idempotency_key=idempotency_key
    ).first()
    if existing is not None and existing.request_hash and existing.request_hash != fingerprint:
        raise IdempotencyConflict(
            "this Idempotency-Key was used with a different request; use a new key"
        )
    return existing


@functools.cache
def _insert_statement(vendor: str) -> tuple[str, tuple[models.Field, ...]]:
    """INSERT ... RETURNING id of a TransactionalMessage, built once from the model's fields."""
    connection = connections[DEFAULT_DB_ALIAS]
    quote = connection.ops.quote_name
    meta = TransactionalMessage._meta
    fields = tuple(f for f in meta.concrete_fields if not f.primary_key)
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))}) RETURNING {quote(meta.pk.column)}"
    )
    return sql, fields


def _insert(message: TransactionalMessage) -> None:
    """Store a new message: one INSERT ... RETURNING, its own transaction in autocommit mode
    (no BEGIN and COMMIT round trips), or under a savepoint in the caller's transaction.

    The statement is what Model.save() sends, less the ORM's per-call query compiling (about
    a tenth of a request's CPU): values are prepared by the fields themselves (auto_now,
    JSON, binary); the model has no save() override and no pre/post_save receivers.
    """
    connection = connections[DEFAULT_DB_ALIAS]
    if not connection.features.can_return_columns_from_insert:
        message.save(force_insert=True)
        return
    sql, fields = _insert_statement(connection.vendor)
    values = [f.get_db_prep_save(f.pre_save(message, True), connection) for f in fields]
    with transaction.atomic() if connection.in_atomic_block else nullcontext():
        with connection.cursor() as cursor:
            cursor.execute(sql, values)
            message.pk = cursor.fetchone()[0]
    message._state.adding = False
    message._state.db = DEFAULT_DB_ALIAS


def message_enqueue(*, message: TransactionalMessage) -> None:
    """send_message.delay_on_commit(message.pk), published through this thread's producer."""
    from api.tasks import send_message

    # No MessageEvent row for "accepted": created_at says it, and one INSERT less per call.
    message_pk = message.pk

    def publish() -> None:
        if send_message.app.conf.task_always_eager:  # runs here: no broker to connect to
            send_message.delay(message_pk)
        else:
            send_message.apply_async((message_pk,), producer=_task_producer())

    transaction.on_commit(publish)


_producers = threading.local()


def _task_producer() -> Producer:
    """This thread's Celery producer, whose Redis channel publishes through one client.

    kombu's Redis channel builds a new redis.Redis client for every message it publishes
    (Channel.conn_or_acquire: about 0.15 ms of CPU, a quarter of a publish); a channel of our
    own reuses one (thread-safe, on the channel's connection pool). A channel kombu revives
    after a broker error is taken over the same way on the next call.
    """
    from config.celery import app

    state = getattr(_producers, "state", None)
    if state is None or state[0] != os.getpid():
        connection = app.connection_for_write()
        state = _producers.state = (os.getpid(), app.amqp.Producer(connection))
    producer = state[1]
    channel = producer.channel
    if hasattr(channel, "_create_client") and not getattr(channel, "_skylark_client", None):
        channel._skylark_client = client = channel._create_client()

        @contextmanager
        def conn_or_acquire(given=None):
            yield given or client

        channel.conn_or_acquire = conn_or_acquire
    return producer


# -- sending ----------------------------------------------------------------------------------


def _retry_policy() -> RetryPolicy:
    return RetryPolicy(
        base_seconds=settings.EDM_RETRY_BASE_SECONDS,
        factor=settings.EDM_RETRY_FACTOR,
        max_seconds=settings.EDM_RETRY_MAX_SECONDS,
        lifetime_seconds=settings.EDM_RETRY_LIFETIME_SECONDS,
    )


def _claim(message_id: int, now: datetime) -> TransactionalMessage | None:
    """Compare-and-set pending (or due deferred) -> sending with a lease; None if not ours."""
    due = Q(status=MessageStatus.PENDING) | Q(
        status=MessageStatus.DEFERRED, next_attempt_at__lte=now
    )
    claimed = TransactionalMessage.objects.filter(due, pk=message_id).update(
        status=MessageStatus.SENDING,
        lease_expires_at=now + timedelta(seconds=LEASE_SECONDS),
        updated_at=now,
    )
    if not claimed:
        return None
    return TransactionalMessage.objects.select_related("api_key").get(pk=message_id)


def suppression_reason(*, email: str, category: str) -> str:
    """Why this address must not get a message of this category now ("" when it may)."""
    email = email.lower()
    domain = email.rpartition("@")[2]
    suppressions = Suppression.objects.filter(
        Q(scope=SuppressionScope.ADDRESS, value=email)
        | Q(scope=SuppressionScope.DOMAIN, value=domain)
    )
    contact_status = contacts_by_address(email).values_list("status", flat=True).first()
    if category == Category.MARKETING:
        reason = suppressions.values_list("reason", flat=True).first()
        if reason:
            return str(reason)
        if contact_status and contact_status != ContactStatus.ACTIVE:
            return str(contact_status)
        return ""
    reason = suppressions.filter(reason__in=ALWAYS_SUPPRESSED).values_list("reason", flat=True)
    reason = reason.first()
    if reason:
        return str(reason)
    if contact_status in (ContactStatus.BOUNCED, ContactStatus.COMPLAINED):
        return str(contact_status)
    return ""


def message_send(*, message_id: int) -> str:
    """Claim, check suppression, sign and send one message, record the outcome; the status."""
    now = timezone.now()
    message = _claim(message_id, now)
    if message is None:
        return ""
    reason = suppression_reason(email=message.to_email, category=message.category)
    if reason:
        _record_suppressed(message, reason, now)
        return MessageStatus.SUPPRESSED
    result = message_send_now(
        data=bytes(message.raw),
        from_email=message.from_email,
        to_email=message.to_email,
        tag=message.pk,
        # Asynchronous bounces come back to the return path, with the ENVID where the
        # receiving servers support DSN: both lead the bounce intake to this message.
        sender=correlation.return_path(message.pk),
        envid=correlation.signed_key(message.public_id),
    )
    outcome = outcome_for_result(
        result,
        delivery_id=message.pk,
        attempts=message.attempts + 1,
        first_attempt_at=message.first_attempt_at,
        now=timezone.now(),
        policy=_retry_policy(),
        message_id=message.message_id,
    )
    _record(message, outcome)
    return outcome.status


def _record_suppressed(message: TransactionalMessage, reason: str, now: datetime) -> None:
    with transaction.atomic():
        TransactionalMessage.objects.filter(pk=message.pk).update(
            status=MessageStatus.SUPPRESSED, reason=reason, lease_expires_at=None, updated_at=now
        )
        MessageEvent.objects.create(
            message=message, kind=MessageEventKind.SUPPRESSED, created_at=now, detail=reason
        )


def _record(message: TransactionalMessage, outcome: Outcome) -> None:
    now = outcome.attempted_at
    fields = {
        "status": outcome.status,
        "reason": outcome.reason,
        "attempts": message.attempts + 1,
        "smtp_code": outcome.smtp_code,
        "enhanced_status": outcome.enhanced_status,
        "smtp_reply": outcome.reply,
        "next_attempt_at": outcome.next_attempt_at,
        "lease_expires_at": None,
        "first_attempt_at": message.first_attempt_at or now,
        "updated_at": now,
    }
    if outcome.status == MessageStatus.SENT:
        fields["sent_at"] = now
    with transaction.atomic():
        TransactionalMessage.objects.filter(pk=message.pk, status=MessageStatus.SENDING).update(
            **fields
        )
        MessageEvent.objects.create(
            message=message,
            kind=outcome.status,
            created_at=now,
            smtp_code=outcome.smtp_code,
            enhanced_status=outcome.enhanced_status,
            detail=outcome.reply,
        )
        if outcome.suppress:
            # The same policy table as campaigns' and reports' (this message is not a
            # delivery: it counts as one more hard bounce).
            contact_id = contacts_by_address(message.to_email).values_list("pk", flat=True).first()
            synchronous_bounces_apply(
                recipients=[(message.to_email, contact_id)],
                source="smtp (api)",
                now=now,
                not_recorded=1,
            )


# What an asynchronous report may change: a message that looked delivered. A refusal already
# recorded from the SMTP reply (bounced, failed) stays as it is; the event is still appended.
_REPORTABLE = (MessageStatus.SENT,)


def message_report_record(
    *,
    message_pk: int,
    event: str,
    status: str | None,
    reason: str = "",
    smtp_code: int | None = None,
    enhanced_status: str = "",
    detail: str = "",
    now: datetime,
) -> None:
    """Record what a bounce report (DSN, complaint, provider event) says about a message.

    One event (bounced, failed, deferred, complaint, unsubscribe); with `status` (bounced or
    failed) a sent message moves to it with the report's reason and diagnostic, compare-and-
    set. Suppression is the bounce policy's (delivery.intake.ingest), as for campaigns.
    """
    if status is not None:
        TransactionalMessage.objects.filter(pk=message_pk, status__in=_REPORTABLE).update(
            status=status,
            reason=reason[:40],
            smtp_code=smtp_code,
            enhanced_status=enhanced_status[:16],
            smtp_reply=detail,
            updated_at=now,
        )
    MessageEvent.objects.create(
        message_id=message_pk,
        kind=event,
        created_at=now,
        smtp_code=smtp_code,
        enhanced_status=enhanced_status[:16],
        detail=detail,
    )


def messages_sweep(*, now: datetime | None = None, stale_seconds: int = 60) -> dict[str, int]:
    """Take back expired leases, re-enqueue due deferrals and pending rows the broker lost."""
    from api.tasks import send_message

    now = now or timezone.now()
    reclaimed = list(
        TransactionalMessage.objects.filter(
            status=MessageStatus.SENDING, lease_expires_at__lt=now
        ).values_list("pk", flat=True)[:1000]
    )
    if reclaimed:
        with transaction.atomic():
            TransactionalMessage.objects.filter(
                pk__in=reclaimed, status=MessageStatus.SENDING
            ).update(status=MessageStatus.DEFERRED, next_attempt_at=now, lease_expires_at=None)
            MessageEvent.objects.bulk_create(
                MessageEvent(message_id=pk, kind=MessageEventKind.RECLAIMED, created_at=now)
                for pk in reclaimed
            )
    due = list(
        TransactionalMessage.objects.filter(
            Q(status=MessageStatus.DEFERRED, next_attempt_at__lte=now)
            | Q(
                status=MessageStatus.PENDING,
                created_at__lt=now - timedelta(seconds=stale_seconds),
            )
        ).values_list("pk", flat=True)[:5000]
    )
    for pk in due:
        send_message.delay(pk)
    return {"reclaimed": len(reclaimed), "enqueued": len(due)}
