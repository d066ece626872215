"""The shared Redis connection (rate limits, de-duplication keys); never a source of truth."""

from __future__ import annotations

import functools

import redis
from django.conf import settings


@functools.cache
def get_redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


def claim_once(key: str, *, seconds: int) -> bool:
    """True the first time within `seconds` that anyone asks for this key (SET NX EX).

    When Redis is unreachable, say yes: the database-level claims keep the work exact.
    """
    try:
        return bool(get_redis().set(key, "1", nx=True, ex=max(1, seconds)))
    except redis.RedisError:
        return True


def release(key: str) -> None:
    """Let go of a key taken with claim_once before it expires."""
    try:
        get_redis().delete(key)
    except redis.RedisError:
        pass  # it expires by itself
