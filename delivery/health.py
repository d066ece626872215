"""SMTP server health as the senders see it: a server that keeps failing is rested.

Connection-level failures (connect, TLS, AUTH, timeouts, drops) count against a server; any
success clears the count. After EDM_SERVER_FAILURES of them in a row the server is rested
for EDM_SERVER_REST_SECONDS and traffic moves to the other servers. The state lives in
Redis (shared by every worker, and harmless to lose).
"""

from __future__ import annotations

import logging

import redis
from django.conf import settings

from config.redis import get_redis
from mailkit.smtp import SendResult, SendStatus

logger = logging.getLogger(__name__)

# Stages where a failure says something about the server, not about the recipient.
SERVER_STAGES = frozenset({"connect", "tls", "auth", "ehlo", "timeout", "dropped"})


def _failures_key(route_key: str) -> str:
    return f"skylark:health:{route_key}:failures"


def _rested_key(route_key: str) -> str:
    return f"skylark:health:{route_key}:rested"


def record_result(route_key: str, result: SendResult) -> None:
    """Count a server-level failure, or clear the count on success."""
    try:
        client = get_redis()
        if result.status == SendStatus.SENT:
            client.delete(_failures_key(route_key))
        elif result.status == SendStatus.TEMPORARY and result.stage in SERVER_STAGES:
            failures = client.incr(_failures_key(route_key))
            client.expire(_failures_key(route_key), settings.EDM_SERVER_REST_SECONDS)
            if failures >= settings.EDM_SERVER_FAILURES:
                client.set(_rested_key(route_key), "1", ex=settings.EDM_SERVER_REST_SECONDS)
                client.delete(_failures_key(route_key))
                logger.warning(
                    "resting %s for %ss after %s failures in a row (last: %s %s)",
                    route_key,
                    settings.EDM_SERVER_REST_SECONDS,
                    failures,
                    result.stage,
                    result.code,
                )
    except redis.RedisError as exc:
        logger.warning("server health not recorded: %s", exc)


def is_rested(route_key: str) -> bool:
    try:
        return bool(get_redis().exists(_rested_key(route_key)))
    except redis.RedisError:
        return False


def _quota_key(route_key: str) -> str:
    import datetime

    return f"skylark:quota:{route_key}:{datetime.datetime.now(datetime.UTC):%Y%m%d}"


def quota_refund(route_key: str, count: int, *, daily_quota: int) -> None:
    """Give back quota taken for sends that did not happen (nothing to claim, dropped rows)."""
    if daily_quota <= 0 or count <= 0:
        return
    try:
        get_redis().decrby(_quota_key(route_key), count)
    except redis.RedisError as exc:
        logger.warning("daily quota not refunded: %s", exc)


def quota_take(route_key: str, *, wanted: int, daily_quota: int) -> int:
    """Take up to `wanted` sends from a server's daily quota (UTC day); how many were granted.

    Unlimited (0) grants everything. Without Redis, grants everything too: a quota is a
    courtesy to the provider, never a reason to stop a campaign on an infrastructure error.
    """
    if daily_quota <= 0 or wanted <= 0:
        return wanted
    key = _quota_key(route_key)
    try:
        client = get_redis()
        used = client.incrby(key, wanted)
        client.expire(key, 2 * 86400)
        over = max(used - daily_quota, 0)
        if over:
            client.decrby(key, min(over, wanted))
        return max(wanted - over, 0)
    except redis.RedisError as exc:
        logger.warning("daily quota not checked: %s", exc)
        return wanted
