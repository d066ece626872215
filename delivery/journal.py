"""The journal of acceptances: each 250 on record in Redis before its connection sends again.

The outcome flush writes a second or 250 rows at a time; a worker killed in between used to
send every message accepted since its last flush again. The journal closes that window: the
moment the server accepts a message, its delivery id, message id and reply are written to
Redis (one pipelined write per group of acceptances that arrive together) while the pool
still holds the connection, so the connection carries nothing else until the acceptance is
on record. The outcome flush drains what it wrote; a takeover, a sweeper reclaim or a
restart after a database outage first replays what is left as sent outcomes
(campaigns.sending.claims) and sends only the rest: the messages that were on the wire.

Redis is never the source of truth: an acceptance lost with Redis (restarted empty) only
brings back the old bound (duplicates within one flush), never a lost message. A worker that
cannot write the journal holds its connections and retries rather than send what it could
not account for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from django.conf import settings
from django.db import transaction

from config.redis import get_redis
from mailkit.outcomes import Outcome, RetryPolicy, outcome_for_result
from mailkit.smtp import SendResult, SendStatus

logger = logging.getLogger(__name__)

# Deliveries per Redis hash: a replay reads a range with one HMGET per shard, and a shard
# nobody writes any more expires with what a crash left in it.
SHARD = 10_000
# Waits between attempts to write the journal while Redis is unreachable (seconds).
RETRY_WAITS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Acceptance:
    """One message the server accepted: what its sent outcome needs."""

    delivery_id: int
    code: int | None
    enhanced: str
    text: str
    message_id: str
    accepted_at: datetime

    def outcome(self) -> Outcome:
        """The sent outcome the flush would have written (attempts are counted by the writer)."""
        result = SendResult(
            self.delivery_id, SendStatus.SENT, self.code, self.enhanced, self.text, "data"
        )
        return outcome_for_result(
            result,
            delivery_id=self.delivery_id,
            attempts=1,
            first_attempt_at=None,
            now=self.accepted_at,
            policy=RetryPolicy(),
            message_id=self.message_id,
        )


def _key(shard: int) -> str:
    # Namespaced by queue, as the sweeper's keys: installations sharing one Redis keep apart.
    return f"skylark:{settings.CELERY_TASK_DEFAULT_QUEUE}:journal:{shard}"


def _by_shard(delivery_ids: Iterable[int]) -> dict[int, list[int]]:
    shards: dict[int, list[int]] = {}
    for delivery_id in delivery_ids:
        shards.setdefault(delivery_id // SHARD, []).append(delivery_id)
    return shards


def _entry(result: SendResult) -> tuple[int, str]:
    delivery_id, message_id = _tag(result.tag)
    value = [result.code, result.enhanced, result.text, message_id, round(time.time(), 3)]
    return delivery_id, json.dumps(value, separators=(",", ":"))


def _tag(tag: object) -> tuple[int, str]:
    """(delivery id, message id) of a campaign's ``(id, message_id)`` tag or a bare id."""
    if isinstance(tag, tuple):
        return int(tag[0]), str(tag[1] or "")
    return int(tag), ""  # type: ignore[call-overload]


def acceptances_write(entries: list[tuple[int, str]]) -> None:
    """Write a group of acceptances in one pipelined round trip (raises redis.RedisError)."""
    pipe = get_redis().pipeline(transaction=False)
    ttl = settings.EDM_JOURNAL_TTL_SECONDS
    shards: dict[int, dict[int, str]] = {}
    for delivery_id, value in entries:
        shards.setdefault(delivery_id // SHARD, {})[delivery_id] = value
    for shard, mapping in shards.items():
        pipe.hset(_key(shard), mapping=mapping)
        pipe.expire(_key(shard), ttl)
    pipe.execute()


class JournalWriter:
    """The pool's ``on_accepted`` hook: acceptances written a group at a time (group commit).

    Lives on the runner's event loop (one per batch run or message). Each accepted message
    waits until its group is written; acceptances that arrive while a write is on its way
    form the next group, so at ten connections a write serves several of them. The write
    runs in a thread: the loop keeps reading the other connections' replies meanwhile.
    """

    def __init__(self) -> None:
        self._waiting: list[tuple[tuple[int, str], asyncio.Future[None]]] = []
        self._writing = False
        self.groups = 0
        self.written = 0

    async def __call__(self, result: SendResult) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._waiting.append((_entry(result), done))
        if not self._writing:
            self._writing = True
            loop.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                await self._write([entry for entry, _ in group])
                for _, done in group:
                    if not done.done():
                        done.set_result(None)
        finally:
            self._writing = False

    async def _write(self, entries: list[tuple[int, str]]) -> None:
        failures = 0
        while True:
            try:
                await asyncio.to_thread(acceptances_write, entries)
            except redis.RedisError as exc:
                # Sending waits: a message accepted but not on record would be sent again.
                wait = RETRY_WAITS[min(failures, len(RETRY_WAITS) - 1)]
                if failures == 0 or failures % 30 == 0:
                    logger.warning(
                        "the journal cannot be written (%s); %d connections wait",
                        type(exc).__name__,
                        len(entries),
                    )
                failures += 1
                await asyncio.sleep(wait)
                continue
            self.groups += 1
            self.written += len(entries)
            if failures:
                logger.warning("the journal is written again after %d failures", failures)
            return


def journal_writer() -> JournalWriter | None:
    """A writer for one batch run or message, or None when the journal is switched off."""
    return JournalWriter() if settings.EDM_ACCEPTANCE_JOURNAL else None


def journal_drain(delivery_ids: Iterable[int]) -> None:
    """Forget acceptances whose outcomes are written (after the flush's commit)."""
    shards = _by_shard(delivery_ids)
    if not shards or not settings.EDM_ACCEPTANCE_JOURNAL:
        return
    pipe = get_redis().pipeline(transaction=False)
    for shard, ids in shards.items():
        pipe.hdel(_key(shard), *ids)
    try:
        pipe.execute()
    except redis.RedisError as exc:
        # Harmless: a replay only applies acceptances to rows that are still open.
        logger.warning("the journal was not drained (%s)", type(exc).__name__)


def journal_acceptances(delivery_ids: Iterable[int]) -> dict[int, Acceptance]:
    """The journal's acceptances among these deliveries; {} when Redis cannot say (a replay
    then falls back to sending them again: duplicates, never a loss)."""
    shards = _by_shard(delivery_ids)
    if not shards:
        return {}
    pipe = get_redis().pipeline(transaction=False)
    order: list[list[int]] = []
    for shard, ids in shards.items():
        pipe.hmget(_key(shard), ids)
        order.append(ids)
    try:
        replies = pipe.execute()
    except redis.RedisError as exc:
        logger.warning("the journal cannot be read (%s): no replay", type(exc).__name__)
        return {}
    found: dict[int, Acceptance] = {}
    for ids, values in zip(order, replies, strict=True):
        for delivery_id, value in zip(ids, values, strict=True):
            if value is not None:
                acceptance = _acceptance(delivery_id, value)
                if acceptance is not None:
                    found[delivery_id] = acceptance
    return found


def _acceptance(delivery_id: int, value: bytes) -> Acceptance | None:
    try:
        code, enhanced, text, message_id, at = json.loads(value)
        return Acceptance(
            delivery_id=delivery_id,
            code=int(code) if code is not None else None,
            enhanced=str(enhanced),
            text=str(text),
            message_id=str(message_id),
            accepted_at=datetime.fromtimestamp(float(at), tz=UTC),
        )
    except (ValueError, TypeError) as exc:
        logger.warning("journal entry of delivery %s unreadable (%s)", delivery_id, exc)
        return None


def journal_replay(*, delivery_ids: list[int]) -> set[int]:
    """Write the journal's acceptances among these deliveries as sent outcomes, with the
    reply the server gave; the ids replayed (the caller sends or reclaims only the others).

    Called inside the caller's transaction, with the rows locked and still open (a takeover,
    a sweeper reclaim); the acceptances are forgotten once it commits.
    """
    from delivery.recording import deliveries_record

    if not delivery_ids or not settings.EDM_ACCEPTANCE_JOURNAL:
        return set()
    found = journal_acceptances(delivery_ids)
    if not found:
        return set()
    deliveries_record([acceptance.outcome() for acceptance in found.values()])
    transaction.on_commit(lambda: journal_drain(found))
    logger.warning(
        "replayed %d acceptances from the journal (deliveries %s-%s)",
        len(found),
        min(found),
        max(found),
    )
    return set(found)
