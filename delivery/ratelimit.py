"""Send-rate limits shared by every worker on every machine, kept in Redis.

A generic cell rate algorithm (GCRA) with reservations: each send reserves the next free slot
on every limit that applies to it (its SMTP server, its recipient's provider) in one atomic
Lua call that uses Redis's clock, then sleeps until that slot. Callers never poll, workers
never drift apart, and the configured rate holds however many workers there are.

A 421 reply or "too many connections" slows a limit down (its interval is multiplied, up to
16x) for a few minutes; without new complaints it speeds back up when that expires.

When Redis cannot be reached the limits fall back to this process alone (the rate is then
per process, not shared); sending goes on.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis
import redis.asyncio as aioredis

logger = logging.getLogger(__name__)

PREFIX = "skylark:rate:"
MAX_SLOWDOWN = 16
SLOWDOWN_SECONDS = 300

# KEYS[1]: the limit; ARGV: its interval and burst tolerance in microseconds. Reserves the
# next free slot and returns the wait in microseconds until it.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local factor = tonumber(redis.call('GET', KEYS[1] .. ':slow') or '1')
local interval = tonumber(ARGV[1]) * factor
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local start = tat - tonumber(ARGV[2]) * factor
if start < now then start = now end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return start - now
"""


@dataclass(frozen=True)
class Limit:
    """A rate shared by everyone using `key`: `per_second` messages, bursts of `burst`."""

    key: str
    per_second: float
    burst: int = 1

    @property
    def interval_us(self) -> int:
        return max(1, int(1_000_000 / self.per_second))


@dataclass
class RateLimiter:
    """The limits of one campaign's sends: per server, and per recipient provider."""

    redis_url: str
    server: Limit | None = None
    domains: Mapping[str, Limit] = field(default_factory=dict)
    _client: aioredis.Redis | None = None
    _script: object = None
    _loop: asyncio.AbstractEventLoop | None = None
    _redis_retry_at: float = 0.0
    _local: dict[str, float] = field(default_factory=dict)

    def limits_for(self, recipient: str) -> list[Limit]:
        limits = [self.server] if self.server else []
        domain = recipient.rpartition("@")[2].lower()
        if domain in self.domains:
            limits.append(self.domains[domain])
        return limits

    async def wait(self, envelope) -> None:
        """Sleep until every limit that applies to this envelope allows it (before_send).

        The provider's limit is reserved first and the server's last, each after sleeping
        for the one before: a slot is taken only when the message can really use it, so a
        slow provider never holds the server's slots from messages to everyone else.
        """
        limits = self.limits_for(envelope.recipients[0]) if envelope.recipients else []
        for limit in reversed(limits):
            if time.monotonic() < self._redis_retry_at:
                delay_us = self._reserve_locally(limit)
            else:
                try:
                    delay_us = await self._reserve(limit)
                except (redis.RedisError, OSError, RuntimeError) as exc:
                    # RuntimeError: a client bound to an event loop that is gone (a runner
                    # restart). Redis is tried again after a pause, not on every message.
                    logger.warning("rate limits fall back to this process for 30 s: %s", exc)
                    self._client = None
                    self._redis_retry_at = time.monotonic() + 30
                    delay_us = self._reserve_locally(limit)
            if delay_us > 0:
                await asyncio.sleep(delay_us / 1_000_000)

    async def _reserve(self, limit: Limit) -> int:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            # A client belongs to the event loop it was made on (a runner restart makes a
            # new loop).
            self._loop = loop
            self._client = aioredis.Redis.from_url(
                self.redis_url, socket_timeout=2, socket_connect_timeout=2
            )
            self._script = self._client.register_script(_RESERVE)
        args = [limit.interval_us, limit.interval_us * max(limit.burst - 1, 0)]
        return int(await self._script(keys=[PREFIX + limit.key], args=args))

    def _reserve_locally(self, limit: Limit) -> int:
        now = time.monotonic()
        start = max(now, self._local.get(limit.key, now))
        self._local[limit.key] = start + 1 / limit.per_second
        return int((start - now) * 1_000_000)


# Replies that ask the sender to slow down. Greylisting ("try again later" for a first
# contact) is not one of them: it asks for a retry, and the retry schedule handles it.
_SLOW_TEXT = re.compile(
    r"too many (connections|messages|recipients)|rate limit|throttl|"
    r"temporarily (deferred|rate limited)|slow down|receiving mail (too quickly|at a rate)",
    re.I,
)

# Double a limit's slow-down factor at most once per SLOWDOWN_STEP_SECONDS, atomically: a
# burst of 421s from concurrent connections is one complaint, not four.
_SLOW_DOWN = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return tonumber(redis.call('GET', KEYS[1]) or '1')
end
local factor = tonumber(redis.call('GET', KEYS[1]) or '1') * 2
if factor > tonumber(ARGV[1]) then factor = tonumber(ARGV[1]) end
redis.call('SET', KEYS[1], factor, 'EX', ARGV[2])
redis.call('SET', KEYS[2], '1', 'EX', ARGV[3])
return factor
"""
SLOWDOWN_STEP_SECONDS = 10


def is_slow_down(code: int | None, text: str) -> bool:
    """Does this reply ask us to send more slowly? (421, or 4xx about rates)."""
    if code == 421:
        return True
    return bool(code and 400 <= code < 500 and _SLOW_TEXT.search(text or ""))


def slow_down_keys(
    limiter: RateLimiter, recipient: str, *, stage: str, code: int | None
) -> list[str]:
    """Which limits a slow-down reply is about: a 421 or a connection-level reply speaks for
    the server; a reply about one recipient speaks for that recipient's provider."""
    limits = limiter.limits_for(recipient)
    server_wide = code == 421 or stage in {"connect", "ehlo", "mail"}
    if server_wide:
        return [limit.key for limit in limits]
    return [limit.key for limit in limits if limit is not limiter.server]


def slow_down(client: redis.Redis, key: str) -> int:
    """Double a limit's interval (up to MAX_SLOWDOWN) for SLOWDOWN_SECONDS; the new factor."""
    slow_key = PREFIX + key + ":slow"
    try:
        factor = int(
            client.eval(
                _SLOW_DOWN, 2, slow_key, slow_key + ":step",
                MAX_SLOWDOWN, SLOWDOWN_SECONDS, SLOWDOWN_STEP_SECONDS,
            )
        )  # fmt: skip
    except redis.RedisError as exc:
        logger.warning("cannot record a slow-down for %s: %s", key, exc)
        return 1
    logger.info("slowing down %s: interval x%d for %ds", key, factor, SLOWDOWN_SECONDS)
    return factor
