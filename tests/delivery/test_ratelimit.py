"""Shared rate limits in a real Redis: reservations, several limits, slow-downs, fallback."""

from __future__ import annotations

import asyncio
import time

import pytest

from delivery.ratelimit import Limit, RateLimiter, is_slow_down, slow_down
from mailkit.smtp import Envelope


def envelope(to: str) -> Envelope:
    return Envelope(sender="b@skylark.test", recipients=(to,), data=b"x")


def reservations(limiter: RateLimiter, recipients: list[str]) -> list[int]:
    """The wait each recipient's strictest limit gives, reserving without sleeping."""

    async def run() -> list[int]:
        waits = []
        for to in recipients:
            waits.append(max([await limiter._reserve(x) for x in limiter.limits_for(to)]))
        return waits

    return asyncio.run(run())


def test_reservations_space_sends_at_the_configured_rate(redis_url, redis_client):
    limiter = RateLimiter(redis_url=redis_url, server=Limit(key="server:t1", per_second=100))
    started = time.monotonic()
    waits = reservations(limiter, [f"r{i}@example.com" for i in range(50)])
    elapsed_us = (time.monotonic() - started) * 1_000_000
    interval = 10_000  # 100 per second
    for k, wait in enumerate(waits):
        # Slot k starts k intervals after the first; time spent reserving shortens the wait.
        assert k * interval - elapsed_us - 1000 <= wait <= k * interval + 1000


def test_two_limiters_share_one_schedule(redis_url, redis_client):
    """Two workers (two limiters) on one key never get the same slot."""
    first = RateLimiter(redis_url=redis_url, server=Limit(key="server:t2", per_second=10))
    second = RateLimiter(redis_url=redis_url, server=Limit(key="server:t2", per_second=10))
    waits = sorted(reservations(first, ["a@x.org"] * 5) + reservations(second, ["b@x.org"] * 5))
    gaps = [b - a for a, b in zip(waits, waits[1:], strict=False)]
    assert all(gap > 80_000 for gap in gaps)  # about 100 ms apart, minus reservation time


def test_the_strictest_applicable_limit_wins(redis_url, redis_client):
    limiter = RateLimiter(
        redis_url=redis_url,
        server=Limit(key="server:t3", per_second=1000),
        domains={"gmail.com": Limit(key="domain:gmail", per_second=2)},
    )
    assert [limit.key for limit in limiter.limits_for("x@GMAIL.com")] == [
        "server:t3",
        "domain:gmail",
    ]
    assert [limit.key for limit in limiter.limits_for("x@other.org")] == ["server:t3"]
    waits = reservations(limiter, ["a@gmail.com", "b@gmail.com", "c@gmail.com"])
    assert waits[2] > 900_000  # the third Gmail send waits about a second
    assert reservations(limiter, ["d@other.org"])[0] < 10_000  # others are not held back


def test_waiting_for_a_provider_does_not_hold_the_servers_slots(redis_url, redis_client):
    limiter = RateLimiter(
        redis_url=redis_url,
        server=Limit(key="server:t6", per_second=1000),
        domains={"qq.com": Limit(key="domain:qq", per_second=5)},
    )

    async def run() -> tuple[float, float]:
        started = time.monotonic()
        slow = [asyncio.create_task(limiter.wait(envelope(f"q{i}@qq.com"))) for i in range(3)]
        await asyncio.sleep(0)
        await limiter.wait(envelope("someone@example.org"))
        other = time.monotonic() - started
        await asyncio.gather(*slow)
        return other, time.monotonic() - started

    other, qq = asyncio.run(run())
    assert other < 0.3  # not behind the QQ queue (its third slot is at 0.4 s)
    assert qq >= 0.35  # three QQ sends at 5 per second


def test_slow_down_doubles_the_interval_and_expires(redis_url, redis_client):
    limiter = RateLimiter(redis_url=redis_url, server=Limit(key="server:t4", per_second=100))
    assert slow_down(redis_client, "server:t4") == 2
    assert slow_down(redis_client, "server:t4") == 2  # a burst of complaints counts once
    redis_client.delete("skylark:rate:server:t4:slow:step")  # the step window passed
    assert slow_down(redis_client, "server:t4") == 4
    assert redis_client.ttl("skylark:rate:server:t4:slow") > 0
    waits = reservations(limiter, ["a@x.org", "b@x.org"])
    assert waits[1] >= 35_000  # 10 ms x 4, minus reservation time
    for _ in range(10):
        redis_client.delete("skylark:rate:server:t4:slow:step")
        slow_down(redis_client, "server:t4")
    assert int(redis_client.get("skylark:rate:server:t4:slow")) == 16


def test_without_redis_limits_fall_back_to_this_process():
    limiter = RateLimiter(
        redis_url="redis://127.0.0.1:9/0", server=Limit(key="server:t5", per_second=1000)
    )

    async def run() -> float:
        started = time.monotonic()
        for i in range(20):
            await limiter.wait(envelope(f"r{i}@x.org"))
        return time.monotonic() - started

    assert asyncio.run(run()) >= 0.018  # still spaced: 20 sends at 1000/s


@pytest.mark.parametrize(
    ("code", "text", "slow"),
    [
        (421, "4.7.0 Too many connections", True),
        (451, "4.7.1 Rate limit exceeded, try again later", True),
        (450, "4.2.1 The user you are trying to contact is receiving mail too quickly", True),
        (450, "4.2.0 Recipient address rejected: Greylisted, try again later", False),
        (452, "4.5.3 Too many recipients", True),
        (550, "5.1.1 No such user", False),
        (250, "2.0.0 Ok", False),
    ],
)
def test_which_replies_ask_to_slow_down(code, text, slow):
    assert is_slow_down(code, text) is slow


def test_a_recipient_level_reply_slows_its_provider_not_the_server(redis_url):
    from delivery.ratelimit import slow_down_keys

    limiter = RateLimiter(
        redis_url=redis_url,
        server=Limit(key="server:s", per_second=100),
        domains={"gmail.com": Limit(key="domain:g", per_second=10)},
    )
    assert slow_down_keys(limiter, "a@gmail.com", stage="rcpt", code=450) == ["domain:g"]
    assert slow_down_keys(limiter, "a@gmail.com", stage="connect", code=421) == [
        "server:s",
        "domain:g",
    ]
    assert slow_down_keys(limiter, "a@other.org", stage="rcpt", code=451) == []
