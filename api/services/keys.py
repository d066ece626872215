"""API keys: creation, revocation, scopes and sender domains, the per-process cache, rate limits."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from api.errors import InvalidSenderDomain, ScopeError, SenderNotAllowed
from api.models import ApiKey, Scope
from config.redis import get_redis
from mailkit.compose import validate_address
from mailkit.errors import InvalidAddressError

logger = logging.getLogger(__name__)

KEY_PREFIX = "sky_"
_KEY_FORMAT = re.compile(r"sky_([a-z0-9]{8})_([A-Za-z0-9_-]{20,100})")
_RATE_PREFIX = "skylark:api-rate:"


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
