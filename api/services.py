"""Writes of the API app: keys, accepting transactional messages, sending them, the sweeper."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate

import redis
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, models, transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone
from kombu import Producer

from api import correlation
from api.errors import (
    IdempotencyConflict,
    InvalidSenderDomain,
    MessageRejected,
    ScopeError,
    SenderNotAllowed,
)
from api.models import (
    ApiKey,
    Category,
    MessageEvent,
    MessageEventKind,
    MessageSource,
    MessageStatus,
    Scope,
    TransactionalMessage,
)
from api.selectors import UNSUBSCRIBE_TOKEN_PURPOSE
from campaigns.models import Template
from contacts.models import (
    Contact,
    ContactStatus,
    Suppression,
    SuppressionReason,
    SuppressionScope,
)
from contacts.selectors import contacts_by_keys
from delivery import tokens
from delivery.redis import get_redis
from delivery.services import message_send_now
from delivery.tokens import make_token
from mailkit.compose import (
    Attachment,
    Composer,
    MessageSpec,
    make_message_id,
    validate_address,
)
from mailkit.errors import DeliveryError, InvalidAddressError, TemplateError
from mailkit.headerblock import headers_strip, originators_read
from mailkit.outcomes import Outcome, RetryPolicy, outcome_for_result
from mailkit.render import (
    CompiledTemplates,
    TemplateSource,
    compile_templates,
    contact_context,
    render_content,
)
from mailkit.text import clean_text

logger = logging.getLogger(__name__)

KEY_PREFIX = "sky_"
_KEY_FORMAT = re.compile(r"sky_([a-z0-9]{8})_([A-Za-z0-9_-]{20,100})")
_RATE_PREFIX = "skylark:api-rate:"
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


# -- API keys --------------------------------------------------------------------------------


def _hash_secret(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def sender_domains_normalize(domains: Sequence[str]) -> list[str]:
    """Domains as a key stores and compares them: lowercase A-labels, sorted, each once.

    InvalidSenderDomain names the first entry that is not a domain name.
    """
    normalized = set()
    for domain in domains:
        normalized.add(_domain_normalize(domain))
    return sorted(normalized)


def _domain_normalize(domain: str) -> str:
    cleaned = domain.strip().rstrip(".").lower()
    try:
        # The address check does the IDNA encoding (an A-label is what DKIM and DNS see).
        normalized = validate_address(f"x@{cleaned}").rpartition("@")[2].lower()
    except InvalidAddressError:
        normalized = ""
    # A sender domain has a dot: a single label has no public DNS for SPF, DKIM or DMARC.
    if "." not in normalized:
        raise InvalidSenderDomain(f"not a domain name: {domain!r}")
    return normalized


def sender_check(*, api_key: ApiKey, from_emails: Sequence[str]) -> None:
    """SenderNotAllowed unless every From address is in a domain the key may send from."""
    if not api_key.allowed_from_domains:
        return
    for address in from_emails:
        try:
            domain = _domain_normalize(address.rpartition("@")[2])
        except InvalidSenderDomain:
            domain = ""
        if not domain or not api_key.allows_from_domain(domain):
            raise SenderNotAllowed(
                f"this API key may not send from {address!r}: its From domains are "
                f"{', '.join(api_key.allowed_from_domains)}"
            )


def api_key_create(
    *,
    application: str,
    scopes: Sequence[str],
    rate_limit_per_minute: int | None = None,
    allowed_from_domains: Sequence[str] = (),
) -> tuple[ApiKey, str]:
    """Create a key; returns it with the full secret, which is never stored nor shown again.

    With `allowed_from_domains`, the key may send only From those domains (empty: any).
    """
    unknown = sorted(set(scopes) - set(Scope.values))
    if unknown:
        raise ScopeError(f"unknown scopes: {', '.join(unknown)} (known: {', '.join(Scope.values)})")
    domains = sender_domains_normalize(allowed_from_domains)
    while True:
        prefix = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8))
        if not ApiKey.objects.filter(prefix=prefix).exists():
            break
    plaintext = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey.objects.create(
        application=application,
        prefix=prefix,
        secret_hash=_hash_secret(plaintext),
        scopes=sorted(set(scopes)),
        rate_limit_per_minute=rate_limit_per_minute,
        allowed_from_domains=domains,
    )
    logger.info("API key %s created for %s", prefix, application)
    return key, plaintext


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke a key at once; it is kept (its messages refer to it) but never accepted again."""
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])  # post_save: api_keys_changed()
        logger.info("API key %s revoked", api_key.prefix)
    return api_key


def api_key_authenticate(token: str) -> ApiKey | None:
    """The active key this secret belongs to, or None; constant-time comparison of hashes."""
    match = _KEY_FORMAT.fullmatch(token.strip())
    if match is None:
        return None
    key = ApiKey.objects.filter(prefix=match.group(1), revoked_at__isnull=True).first()
    if key is None or not secrets.compare_digest(key.secret_hash, _hash_secret(token.strip())):
        return None
    _touch(key, timezone.now())
    return key


def _touch(key: ApiKey, now: datetime) -> None:
    # One write a minute at most, not one per request.
    if key.last_used_at is None or now - key.last_used_at > timedelta(seconds=60):
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now


# -- the per-process key cache -----------------------------------------------------------------
# The web API looks a key up in the database once per process and cache period, not once per
# request. What keeps a revocation immediate: every change to any key (a save, a delete, a
# revocation) writes a new random generation to Redis, before and after its commit, and every
# request reads the generation (in the rate limit's round trip) before trusting its cached key.
# The generation is read before the database is, so a key read from the database is never
# cached under a generation older than a revocation it missed. Without Redis, no cache.

_KEYS_GENERATION = "skylark:api-keys:generation"
_KEY_CACHE_MAX = 1000


@dataclass
class _CachedKey:
    key: ApiKey
    generation: bytes | None
    loaded_at: float


_key_cache: dict[str, _CachedKey] = {}  # by SHA-256 of the secret
_redis_client: tuple[int, redis.Redis] | None = None


def _redis() -> redis.Redis:
    """One client (and connection pool) per process, not a new connection per request."""
    global _redis_client
    if _redis_client is None or _redis_client[0] != os.getpid():
        _redis_client = (os.getpid(), get_redis())
    return _redis_client[1]


def api_keys_changed() -> None:
    """Make every process drop its cached keys: call on any change to an ApiKey row.

    Bumped now (a request that reads the key after this sees the change) and again after the
    commit (a request that read the old row before the commit cached it under the first bump).
    """

    def bump() -> None:
        try:
            _redis().set(_KEYS_GENERATION, secrets.token_hex(8))
        except redis.RedisError as exc:  # the cache period bounds staleness then
            logger.error("API key cache not invalidated: redis: %s", exc)

    bump()
    transaction.on_commit(bump)
    _key_cache.clear()


def api_key_authorize(token: str, *, now: float | None = None) -> tuple[ApiKey | None, int]:
    """(the active key of this secret or None, seconds to wait under its rate limit or 0).

    What the web API calls on every request: api_key_authenticate and api_key_throttle, from
    the per-process cache with one Redis round trip when the key was seen recently.
    """
    token = token.strip()
    if _KEY_FORMAT.fullmatch(token) is None:
        return None, 0
    now = time.time() if now is None else now
    cache_seconds = settings.EDM_API_KEY_CACHE_SECONDS
    digest = _hash_secret(token)
    cached = _key_cache.get(digest) if cache_seconds > 0 else None
    counted: int | None = None
    if cached is not None and time.monotonic() - cached.loaded_at < cache_seconds:
        try:
            generation, counted = _generation_and_count(cached.key, now)
        except redis.RedisError as exc:
            logger.warning("API key cache not used: redis: %s", exc)
        else:
            if generation == cached.generation:
                _touch(cached.key, timezone.now())
                return cached.key, _retry_after(cached.key, counted, now)
    _key_cache.pop(digest, None)
    generation: bytes | None = None
    if cache_seconds > 0:
        try:
            generation = _redis().get(_KEYS_GENERATION)
        except redis.RedisError as exc:
            logger.warning("API key cache not used: redis: %s", exc)
            cache_seconds = 0
    key = api_key_authenticate(token)
    if key is None:
        return None, 0
    if cache_seconds > 0:
        if len(_key_cache) >= _KEY_CACHE_MAX:
            _key_cache.clear()
        _key_cache[digest] = _CachedKey(key, generation, time.monotonic())
    if counted is not None and cached is not None and cached.key.pk == key.pk:
        return key, _retry_after(key, counted, now)  # this request is counted already
    return key, api_key_throttle(api_key=key, now=now)


def _rate_limit(api_key: ApiKey) -> int:
    return api_key.rate_limit_per_minute or settings.EDM_API_RATE_PER_MINUTE


def _generation_and_count(api_key: ApiKey, now: float) -> tuple[bytes | None, int | None]:
    """The key generation, and this request counted in the key's window (None: no limit)."""
    pipe = _redis().pipeline(transaction=False)
    pipe.get(_KEYS_GENERATION)
    limit = _rate_limit(api_key)
    if limit > 0:
        rate_key = f"{_RATE_PREFIX}{api_key.pk}:{int(now // 60)}"
        pipe.incr(rate_key)
        pipe.expire(rate_key, 120)
    replies = pipe.execute()
    return replies[0], (replies[1] if limit > 0 else None)


def _retry_after(api_key: ApiKey, count: int | None, now: float) -> int:
    limit = _rate_limit(api_key)
    if count is None or limit <= 0 or count <= limit:
        return 0
    return max(1, int((int(now // 60) + 1) * 60 - now))


def api_key_throttle(*, api_key: ApiKey, now: float | None = None) -> int:
    """Count one request in the key's fixed one-minute window.

    Returns 0 when allowed, else the seconds until the window ends. Without Redis, allow:
    the limit protects capacity, it is not a security boundary.
    """
    limit = _rate_limit(api_key)
    if limit <= 0:
        return 0
    now = time.time() if now is None else now
    key = f"{_RATE_PREFIX}{api_key.pk}:{int(now // 60)}"
    try:
        pipe = _redis().pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 120)
        count = pipe.execute()[0]
    except redis.RedisError as exc:
        logger.warning("API rate limit not applied: redis: %s", exc)
        return 0
    return _retry_after(api_key, count, now)


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
        _enqueue(message)
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


def _enqueue(message: TransactionalMessage) -> None:
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


_HEADER_PARSER = BytesHeaderParser(policy=SMTP_POLICY)


def messages_accept_raw(
    *, api_key: ApiKey, sender: str, recipients: Sequence[str], data: bytes
) -> list[TransactionalMessage]:
    """Accept a message submitted over SMTP: one message per envelope recipient.

    The content is kept as sent (a Message-ID and Date are added when missing, as RFC 6409
    section 8 lets a submission server do); the envelope recipients are used as given,
    never derived from To/Cc/Bcc. Nothing is stored when the header block is ambiguous
    (HeaderRefusal: the bytes travel as written, so no reader may see another From than ours),
    or SenderNotAllowed when a From, Sender, Resent-From or Resent-Sender mailbox (without a
    From, the envelope sender) is in a domain the key may not use.
    """
    found = originators_read(data)
    from_emails = list(found.from_addresses) or [sender]
    # The envelope sender is checked only when it stands in for a missing From: it never
    # leaves Skylark otherwise (the downstream MAIL FROM is our own return path).
    sender_check(api_key=api_key, from_emails=[*from_emails, *found.other_addresses])
    headers = _HEADER_PARSER.parsebytes(data)  # a strict block: it reads what we read
    from_email = from_emails[0]
    domain = (from_email.rpartition("@")[2] or "localhost").lower()
    prefix = b""
    # The header block was read strictly, but what the database stores must hold whatever a
    # parser made of bytes it could not decode (lone surrogates).
    message_id = clean_text(str(headers.get("Message-ID", "")).strip())
    if not message_id:
        message_id = make_message_id(domain=domain)
        prefix += f"Message-ID: {message_id}\r\n".encode()
    if headers.get("Date") is None:
        prefix += f"Date: {formatdate(usegmt=True)}\r\n".encode()
    # Bcc and Resent-Bcc must never travel with the message (RFC 5322 3.6.3, 3.6.6); the
    # Return-Path is the final receiver's to add (RFC 5321 4.4), as Postfix drops a client's;
    # a correlation header is ours to stamp (one per recipient's copy), never the client's.
    raw = prefix + headers_strip(data, ("bcc", "resent-bcc", "return-path", "x-skylark-delivery"))
    subject = clean_text(str(headers.get("Subject", "")))[:998]
    messages = []
    for recipient in recipients:
        message = TransactionalMessage(
            api_key=api_key,
            source=MessageSource.RELAY,
            category=Category.TRANSACTIONAL,
            from_email=from_email,
            to_email=recipient,
            subject=subject,
            message_id=message_id[:255],
        )
        message.raw = correlation.header_line(message.public_id) + raw
        messages.append(message)
    with transaction.atomic():
        for message in messages:
            message.save()
            _enqueue(message)
    return messages


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


def _contacts_by_address(email: str):
    """Contacts with this address in any case, through the lower(email) unique index."""
    return contacts_by_keys([email.lower()])


def suppression_reason(*, email: str, category: str) -> str:
    """Why this address must not get a message of this category now ("" when it may)."""
    email = email.lower()
    domain = email.rpartition("@")[2]
    suppressions = Suppression.objects.filter(
        Q(scope=SuppressionScope.ADDRESS, value=email)
        | Q(scope=SuppressionScope.DOMAIN, value=domain)
    )
    contact_status = _contacts_by_address(email).values_list("status", flat=True).first()
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
            Suppression.objects.get_or_create(
                value=message.to_email.lower(),
                scope=SuppressionScope.ADDRESS,
                defaults={"reason": SuppressionReason.HARD_BOUNCE, "source": "smtp (api)"},
            )
            _contacts_by_address(message.to_email).filter(status=ContactStatus.ACTIVE).update(
                status=ContactStatus.BOUNCED
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
    set. Suppression is the bounce policy's (delivery.intake), as for campaigns.
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


# -- contacts ----------------------------------------------------------------------------------
# The contacts app has no single-contact write service yet (imports are set-based), so the
# API's are here; they only write through the contacts models' own constraints.


def contact_upsert(
    *,
    email: str,
    name: str | None = None,
    attributes: Mapping[str, object] | None = None,
    lists: Sequence[str] = (),
    source: str = "api",
) -> tuple[Contact, bool]:
    """Create or update a contact by address and subscribe it to ``lists`` (created if new).

    Attributes are merged; a contact that unsubscribed, bounced or complained stays so: a
    subscription through the API never resurrects it.
    """
    from contacts.models import ContactList, Subscription, SubscriptionStatus
    from contacts.normalize import InvalidEmail, normalize_email

    try:
        normalized = normalize_email(email)
    except InvalidEmail as exc:
        raise MessageRejected(f"invalid email: {exc.detail}") from None
    with transaction.atomic():
        contact = _contacts_by_address(normalized).select_for_update().first()
        created = contact is None
        if contact is None:
            contact = Contact.objects.create(
                email=normalized, name=name or "", attributes=dict(attributes or {})
            )
        else:
            changed = []
            if name is not None and name != contact.name:
                contact.name = name
                changed.append("name")
            if attributes:
                contact.attributes = {**contact.attributes, **attributes}
                changed.append("attributes")
            if changed:
                contact.save(update_fields=[*changed, "updated_at"])
        for list_name in lists:
            contact_list, _ = ContactList.objects.get_or_create(name=list_name)
            subscription, new = Subscription.objects.get_or_create(
                contact=contact,
                contact_list=contact_list,
                defaults={"status": SubscriptionStatus.SUBSCRIBED, "source": source[:100]},
            )
            if not new and subscription.status == SubscriptionStatus.UNCONFIRMED:
                subscription.status = SubscriptionStatus.SUBSCRIBED
                subscription.save(update_fields=["status", "updated_at"])
    return contact, created


def contact_unsubscribe(*, email: str, lists: Sequence[str] = (), source: str = "api") -> int:
    """Unsubscribe from ``lists``, or from everything (contact status + suppression) when
    none is named; returns how many subscriptions changed, each with a consent record.
    Idempotent."""
    from contacts.models import Subscription
    from contacts.signup import subscriptions_unsubscribe

    contact = _contacts_by_address(email.strip()).first()
    if contact is None:
        raise MessageRejected("no such contact")
    with transaction.atomic():
        if not lists:
            changed, _ = _unsubscribe_everywhere(email=contact.email, source=source)
            return changed
        return subscriptions_unsubscribe(
            Subscription.objects.filter(contact=contact, contact_list__name__in=list(lists)),
            source=source,
        )


def _unsubscribe_everywhere(
    *, email: str, source: str, ip: str = "", user_agent: str = ""
) -> tuple[int, bool]:
    """Stop all marketing mail to an address, with or without a contact; idempotent.

    Every subscription of its contact ends (with a consent record, as campaigns' unsubscribe
    link writes), the contact becomes unsubscribed, and an address suppression with reason
    `unsubscribe` is kept: campaigns exclude it and `suppression_reason` refuses marketing
    messages for it, while transactional mail still goes. Returns (subscriptions ended,
    whether anything changed). Runs inside the caller's transaction.
    """
    from contacts.models import Subscription
    from contacts.signup import subscriptions_unsubscribe

    contacts = list(_contacts_by_address(email).values_list("pk", flat=True))
    changed = subscriptions_unsubscribe(
        Subscription.objects.filter(contact_id__in=contacts),
        source=source,
        ip=ip,
        user_agent=user_agent,
    )
    contact_changed = Contact.objects.filter(pk__in=contacts, status=ContactStatus.ACTIVE).update(
        status=ContactStatus.UNSUBSCRIBED
    )
    _, suppressed = Suppression.objects.get_or_create(
        value=email.lower(),
        scope=SuppressionScope.ADDRESS,
        defaults={"reason": SuppressionReason.UNSUBSCRIBE, "source": source[:200]},
    )
    return changed, bool(changed or contact_changed or suppressed)


def message_unsubscribe(
    *, message: TransactionalMessage, source: str, ip: str = "", user_agent: str = ""
) -> bool:
    """The recipient of a marketing message opted out (its List-Unsubscribe link); idempotent.

    A transactional message names no list, so the opt-out covers all marketing mail to the
    address (`_unsubscribe_everywhere`), and the message's history gets an `unsubscribe`
    event. Returns True when something changed.
    """
    now = timezone.now()
    with transaction.atomic():
        _, changed = _unsubscribe_everywhere(
            email=message.to_email,
            source=f"message {message.public_id}: {source}"[:100],
            ip=ip,
            user_agent=user_agent,
        )
        if changed:
            MessageEvent.objects.create(
                message=message, kind=MessageEventKind.UNSUBSCRIBE, created_at=now, detail=source
            )
    if changed:
        logger.info("message %s: recipient unsubscribed (%s)", message.public_id, source)
    return changed
