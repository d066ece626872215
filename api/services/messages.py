"""Transactional messages: accepting, composing and storing them, sending, the sweeper.

A message is a Delivery without a campaign (its status, attempts, reply, events, bounces)
plus the API's request record (TransactionalMessage: key, idempotency, tags, the composed
bytes). Sending claims the delivery, records the outcome through delivery.recording (the
campaigns' recorder, bounce policy included) and lets the bounce intake correlate reports by
the delivery's own keys.
"""

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

from api.errors import IdempotencyConflict, MessageRejected
from api.models import ApiKey, Category, MessageSource, TransactionalMessage
from api.selectors import UNSUBSCRIBE_TOKEN_PURPOSE
from api.services.contacts import contacts_by_address
from api.services.keys import sender_check
from campaigns.models import Template
from campaigns.sending.claims import deliveries_reclaim_expired
from contacts.models import (
    ContactStatus,
    Suppression,
    SuppressionReason,
    SuppressionScope,
)
from delivery import tokens
from delivery.journal import journal_drain, journal_writer
from delivery.models import Delivery, DeliveryEvent, DeliveryStatus, EventKind
from delivery.services import deliveries_record, message_send_now
from delivery.tokens import make_token
from mailkit.compose import Attachment, Composer, MessageSpec, make_message_id
from mailkit.errors import DeliveryError, TemplateError
from mailkit.outcomes import RetryPolicy, outcome_for_result
from mailkit.render import (
    CompiledTemplates,
    TemplateSource,
    compile_templates,
    contact_context,
    render_content,
)

logger = logging.getLogger(__name__)

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
    request: SendRequest, *, public_id: uuid.UUID, delivery_id: int | None
) -> tuple[Template | None, str, str, bytes]:
    """(template, subject, Message-ID, MIME bytes); MessageRejected on any content problem.

    A marketing message carries List-Unsubscribe (its https one-click URL and a mailto) and
    List-Unsubscribe-Post like a campaign's (RFC 2369, RFC 8058), and its templates see
    `{{ unsubscribe_url }}`; a transactional one carries neither: there is nothing to leave.
    The mailto names the message's delivery (`delivery_id`, stored first for a marketing
    message), as a campaign's does: the bounce intake acts on it the same way.
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
        if request.category == Category.MARKETING and delivery_id is not None:
            unsubscribe_url = message_unsubscribe_url(public_id)
            unsubscribe_mailto = tokens.unsubscribe_mailto(delivery_id=delivery_id)
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
    # Known before the INSERT: the one-click unsubscribe link carries it.
    public_id = uuid.uuid4()
    delivery = Delivery(email=request.to_email)
    try:
        if request.category == Category.MARKETING:
            # Its List-Unsubscribe mailto names the delivery: stored first, all or nothing.
            with transaction.atomic():
                delivery.save(force_insert=True)
                message = _message(
                    request, api_key, idempotency_key, fingerprint, public_id, delivery
                )
                Delivery.objects.filter(pk=delivery.pk).update(message_id=delivery.message_id)
                message.save(force_insert=True)
        else:
            message = _message(request, api_key, idempotency_key, fingerprint, public_id, delivery)
            _insert(message, delivery)
        message_enqueue(message=message)
    except IntegrityError:
        if not idempotency_key:
            raise
        existing = _idempotent_message(api_key, idempotency_key, fingerprint)
        if existing is None:
            raise
        return existing, False
    return message, True


def _message(
    request: SendRequest,
    api_key: ApiKey,
    idempotency_key: str,
    fingerprint: str,
    public_id: uuid.UUID,
    delivery: Delivery,
) -> TransactionalMessage:
    """The request record of a new message, composed (MessageRejected on any content problem);
    its delivery gets the Message-ID."""
    template, subject, message_id, raw = _compose(
        request, public_id=public_id, delivery_id=delivery.pk
    )
    delivery.message_id = message_id
    return TransactionalMessage(
        public_id=public_id,
        delivery=delivery,
        api_key=api_key,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        source=MessageSource.API,
        category=request.category,
        template=template,
        from_email=request.from_email or settings.EDM_DEFAULT_FROM_EMAIL,
        subject=subject[:998],
        tags=list(request.tags),
        raw=raw,
    )


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


def _columns(model: type[models.Model]) -> tuple[str, tuple[models.Field, ...]]:
    quote = connections[DEFAULT_DB_ALIAS].ops.quote_name
    fields = tuple(f for f in model._meta.concrete_fields if not f.primary_key)
    return ", ".join(quote(f.column) for f in fields), fields


@functools.cache
def _insert_statement(
    vendor: str,
) -> tuple[str, tuple[models.Field, ...], tuple[models.Field, ...]]:
    """PostgreSQL: one statement that inserts a delivery and its message, built once from the
    models' fields; returns (message id, delivery id)."""
    quote = connections[DEFAULT_DB_ALIAS].ops.quote_name
    delivery_columns, delivery_fields = _columns(Delivery)
    message_columns, message_fields = _columns(TransactionalMessage)
    message_fields = tuple(f for f in message_fields if f.name != "delivery")
    message_columns = ", ".join(quote(f.column) for f in message_fields)
    sql = (
        f"WITH d AS (INSERT INTO {quote(Delivery._meta.db_table)} ({delivery_columns}) "
        f"VALUES ({', '.join(['%s'] * len(delivery_fields))}) RETURNING id) "
        f"INSERT INTO {quote(TransactionalMessage._meta.db_table)} "
        f"({message_columns}, {quote('delivery_id')}) "
        f"SELECT {', '.join(['%s'] * len(message_fields))}, d.id FROM d "
        f"RETURNING {quote('id')}, {quote('delivery_id')}"
    )
    return sql, delivery_fields, message_fields


def _insert(message: TransactionalMessage, delivery: Delivery) -> None:
    """Store a new message and its delivery.

    PostgreSQL: one statement (a data-modifying WITH), its own transaction in autocommit mode
    (no BEGIN and COMMIT round trips) or under a savepoint in the caller's. The statement is
    what two Model.save() calls send, less the ORM's per-call query compiling (about a tenth
    of a request's CPU): values are prepared by the fields themselves (auto_now, JSON,
    binary); neither model has a save() override or pre/post_save receivers. Elsewhere
    (SQLite: no INSERT in WITH) two saves in one transaction.
    """
    connection = connections[DEFAULT_DB_ALIAS]
    if connection.vendor != "postgresql":
        with transaction.atomic():
            delivery.save(force_insert=True)
            message.delivery = delivery
            message.save(force_insert=True)
        return
    sql, delivery_fields, message_fields = _insert_statement(connection.vendor)
    values = [f.get_db_prep_save(f.pre_save(delivery, True), connection) for f in delivery_fields]
    values += [f.get_db_prep_save(f.pre_save(message, True), connection) for f in message_fields]
    with transaction.atomic() if connection.in_atomic_block else nullcontext():
        with connection.cursor() as cursor:
            cursor.execute(sql, values)
            message.pk, delivery.pk = cursor.fetchone()
    for row in (delivery, message):
        row._state.adding = False
        row._state.db = DEFAULT_DB_ALIAS
    message.delivery = delivery


def message_enqueue(*, message: TransactionalMessage) -> None:
    """send_message.delay_on_commit(message.pk), published through this thread's producer."""
    from api.tasks import send_message

    # No event row for "accepted": the message's created_at says it (one INSERT less).
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
    """Compare-and-set the message's delivery pending (or due deferred) -> sending with a
    lease; the message with its delivery, or None when it is not ours to send."""
    due = Q(status=DeliveryStatus.PENDING) | Q(
        status=DeliveryStatus.DEFERRED, next_attempt_at__lte=now
    )
    claimed = Delivery.objects.filter(due, transactional__pk=message_id).update(
        status=DeliveryStatus.SENDING,
        lease_expires_at=now + timedelta(seconds=LEASE_SECONDS),
        updated_at=now,
    )
    if not claimed:
        return None
    return TransactionalMessage.objects.select_related("delivery").get(pk=message_id)


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
    delivery = message.delivery
    reason = suppression_reason(email=delivery.email, category=message.category)
    if reason:
        _record_suppressed(delivery, reason, now)
        return DeliveryStatus.SUPPRESSED
    journal = journal_writer()
    result = message_send_now(
        # Stamped here, not stored: the delivery's id is known only once the row exists.
        data=tokens.delivery_header_line(delivery.pk) + bytes(message.raw),
        from_email=message.from_email,
        to_email=delivery.email,
        tag=(delivery.pk, delivery.message_id),
        # Asynchronous bounces come back to the return path, with the ENVID where the
        # receiving servers support DSN: both lead the bounce intake to this delivery.
        sender=tokens.delivery_return_path(delivery.pk),
        envid=tokens.delivery_reference(delivery.pk),
        # On record before anything else is sent: a worker lost now is replayed, not resent.
        on_accepted=journal,
    )
    outcome = outcome_for_result(
        result,
        delivery_id=delivery.pk,
        attempts=delivery.attempts + 1,
        first_attempt_at=delivery.first_attempt_at,
        now=timezone.now(),
        policy=_retry_policy(),
        message_id=delivery.message_id,
    )
    # The campaigns' recorder: the event, and a hard bounce under the bounce policy table.
    deliveries_record([outcome])
    if journal is not None and outcome.status == DeliveryStatus.SENT:
        journal_drain([delivery.pk])
    return outcome.status


def _record_suppressed(delivery: Delivery, reason: str, now: datetime) -> None:
    with transaction.atomic():
        Delivery.objects.filter(pk=delivery.pk).update(
            status=DeliveryStatus.SUPPRESSED, reason=reason, lease_expires_at=None, updated_at=now
        )
        DeliveryEvent.objects.create(
            delivery=delivery, kind=EventKind.SUPPRESSED, created_at=now, detail=reason
        )


def messages_sweep(*, now: datetime | None = None, stale_seconds: int = 60) -> dict[str, int]:
    """Take back expired leases, re-enqueue due deferrals and pending messages the broker lost.

    Leases are taken back by the send engine's own reclaim, for every delivery (an attempt
    counted; a message that kills its worker EDM_MAX_RECLAIMS times fails); the campaigns'
    sweeper runs it too, and it is safe to run twice. What is then due and has no campaign
    is this sweeper's to enqueue.
    """
    from api.tasks import send_message

    now = now or timezone.now()
    reclaimed = deliveries_reclaim_expired(now=now)
    due = list(
        TransactionalMessage.objects.filter(
            Q(delivery__status=DeliveryStatus.DEFERRED, delivery__next_attempt_at__lte=now)
            | Q(
                delivery__status=DeliveryStatus.PENDING,
                created_at__lt=now - timedelta(seconds=stale_seconds),
            ),
            delivery__campaign__isnull=True,
        ).values_list("pk", flat=True)[:5000]
    )
    for pk in due:
        send_message.delay(pk)
    return {"reclaimed": reclaimed, "enqueued": len(due)}
