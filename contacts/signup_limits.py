"""Sign-up limits: form posts per client IP, confirmation messages per mailbox and in all."""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from contacts.signup_models import SignupMailQuota

logger = logging.getLogger(__name__)

ADDRESS_WINDOW = timedelta(days=1)
HOUR_WINDOW = timedelta(hours=1)
DAY_WINDOW = timedelta(days=1)
ALL_HOUR_KEY = "all:hour"
ALL_DAY_KEY = "all:day"
# An IPv6 client is counted by its /64: one subscriber line gets a whole /64 and can pick a
# new address in it for every request.
IPV6_PREFIX = 64
# Providers that ignore dots in the local part: a.b@gmail.com and ab@googlemail.com are one inbox.
_DOTLESS_DOMAINS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


# --- per client IP (Redis) -------------------------------------------------------------------


@dataclass(frozen=True)
class RateRefusal:
    """A form post refused because its source posted too many; ``per`` is minute or day."""

    per: str
    retry_after: int


@functools.cache
def _redis() -> redis.Redis:
    # A connection of our own: contacts is below delivery and does not import its helpers.
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


def rate_source(ip: str) -> str:
    """What the per-IP limit counts: the IPv4 address, or the /64 of an IPv6 address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return "unknown"
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/{IPV6_PREFIX}", strict=False))
    return str(address)


def signup_rate_check(*, ip: str) -> RateRefusal | None:
    """Count one form post from ``ip``; a refusal when its source is over the minute's or the
    UTC day's limit (fixed windows in Redis, shared by every web process; 0: no limit).

    Fails open when Redis is down: the mail quotas below are in the database and still hold.
    """
    per_minute = settings.EDM_SIGNUP_RATE_PER_MINUTE
    per_day = settings.EDM_SIGNUP_RATE_PER_DAY
    source = rate_source(ip)
    now = time.time()
    minute_key = f"skylark:signup-rate:{source}:m{int(now // 60)}"
    day_key = f"skylark:signup-rate:{source}:d{int(now // 86400)}"
    try:
        pipe = _redis().pipeline()
        pipe.incr(minute_key)
        pipe.expire(minute_key, 120)
        pipe.incr(day_key)
        pipe.expire(day_key, 86400 + 120)
        minute_count, _, day_count, _ = pipe.execute()
    except redis.RedisError:
        logger.warning("sign-up rate limit unavailable (Redis error); allowing")
        return None
    if per_day and int(day_count) > per_day:
        return RateRefusal("day", max(1, math.ceil(86400 - now % 86400)))
    if per_minute and int(minute_count) > per_minute:
        return RateRefusal("minute", 60)
    return None


# --- confirmation messages (database) --------------------------------------------------------


def mailbox_of(address: str) -> str:
    """The inbox an address reaches, as far as it can be told: lower case, without an RFC 5233
    "+tag", and without dots at Gmail, so that address variants share the victim's limit."""
    local, _, domain = address.rpartition("@")
    local = local.lower().split("+", 1)[0]
    domain = domain.lower()
    if domain in _DOTLESS_DOMAINS:
        local, domain = local.replace(".", ""), _DOTLESS_DOMAINS[domain]
    return f"{local}@{domain}"


def _mailbox_key(address: str) -> str:
    return "mailbox:" + hashlib.sha256(mailbox_of(address).encode()).hexdigest()


def _limits(address: str | None) -> list[tuple[str, int, timedelta]]:
    """(key, limit, window) of each limit in force, in the order their rows are locked (the
    mailbox first, so two sign-ups never wait for each other's rows in a cycle)."""
    limits = []
    if address is not None:
        per_address = settings.EDM_SIGNUP_CONFIRMATIONS_PER_ADDRESS_PER_DAY
        limits.append((_mailbox_key(address), per_address, ADDRESS_WINDOW))
    limits.append((ALL_HOUR_KEY, settings.EDM_SIGNUP_CONFIRMATIONS_PER_HOUR, HOUR_WINDOW))
    limits.append((ALL_DAY_KEY, settings.EDM_SIGNUP_CONFIRMATIONS_PER_DAY, DAY_WINDOW))
    return [(key, limit, window) for key, limit, window in limits if limit > 0]


def _locked_quota(key: str, now: datetime) -> SignupMailQuota:
    # get_or_create retries the read after losing an insert race, so both racers end up
    # holding (one after the other) the lock on the one row.
    quota, _ = SignupMailQuota.objects.select_for_update().get_or_create(
        key=key, defaults={"window_start": now}
    )
    return quota


def signup_mail_quota_take(*, address: str) -> bool:
    """Take one confirmation message for ``address`` from its mailbox's quota and from the
    quotas of all forms together; True when all had room (and all were counted), False when
    any was full (and none was counted).

    Each quota is a fixed window that starts with its first message: the mailbox's next
    message can go one window (24 hours) after its first. The rows are locked, so concurrent
    sign-ups for one mailbox, in any number of processes, send one message.
    """
    now = timezone.now()
    with transaction.atomic():
        quotas = [
            (_locked_quota(key, now), limit, window) for key, limit, window in _limits(address)
        ]
        for quota, limit, window in quotas:
            if quota.window_start <= now - window:
                quota.count, quota.window_start = 0, now
            if quota.count >= limit:
                return False
        for quota, _, _ in quotas:
            quota.count += 1
            quota.save(update_fields=["count", "window_start"])
    return True


def signup_mail_quota_release(*, address: str) -> None:
    """Give back what signup_mail_quota_take took when no message left after all (the SMTP
    server refused it, the form cannot be rendered), so the person can ask again at once."""
    now = timezone.now()
    with transaction.atomic():
        for key, _, window in _limits(address):
            SignupMailQuota.objects.filter(
                key=key, count__gt=0, window_start__gt=now - window
            ).update(count=F("count") - 1)


def signup_mail_quota_wait() -> int:
    """Seconds until all forms together may send a confirmation message again (0: now)."""
    now = timezone.now()
    limits = {key: (limit, window) for key, limit, window in _limits(None)}
    wait = 0.0
    for quota in SignupMailQuota.objects.filter(key__in=list(limits)):
        limit, window = limits[quota.key]
        ends = quota.window_start + window
        if quota.count >= limit and ends > now:
            wait = max(wait, (ends - now).total_seconds())
    return math.ceil(wait)
