"""Use SmtpPool from synchronous code (Celery tasks) through a per-process background loop.

One daemon thread per process runs an asyncio event loop that owns one SmtpPool per
SmtpConfig, so connections outlive a single task and are reused by the next batch. After a
fork (Celery's prefork pool) the child starts its own loop and pools; it never touches the
parent's sockets.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from typing import Any, TypeVar

from mailkit.smtp import AcceptedHook, Envelope, SendResult, SmtpConfig, SmtpPool

logger = logging.getLogger(__name__)

T = TypeVar("T")
BeforeSend = Callable[[Envelope], Awaitable[None]]

SHUTDOWN_TIMEOUT = 10.0


class _LoopThread:
    """An event loop in a daemon thread, and the pools living on it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.pools: dict[SmtpConfig, SmtpPool] = {}
        self.thread = threading.Thread(target=self._run, name="skylark-smtp-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def submit_many(
        self, coroutines: list[Coroutine[Any, Any, T]]
    ) -> list[concurrent.futures.Future[T]]:
        """Start several coroutines with one wake-up of the loop (each wake-up is a write to
        the loop's self-pipe and a GIL hand-over: per message, they cost more than the send).
        """
        futures: list[concurrent.futures.Future[T]] = [
            concurrent.futures.Future() for _ in coroutines
        ]

        def chain(task: asyncio.Task[T], future: concurrent.futures.Future[T]) -> None:
            if task.cancelled():
                future.cancel()
            elif task.exception() is not None:
                future.set_exception(task.exception())
            else:
                future.set_result(task.result())

        def start() -> None:
            for coroutine, future in zip(coroutines, futures, strict=True):
                if future.set_running_or_notify_cancel():
                    task = self.loop.create_task(coroutine)
                    task.add_done_callback(functools.partial(chain, future=future))
                else:
                    coroutine.close()

        self.loop.call_soon_threadsafe(start)
        return futures

    def pool(self, config: SmtpConfig) -> SmtpPool:
        """The pool for ``config``; only called on the loop thread, so no lock is needed."""
        pool = self.pools.get(config)
        if pool is None:
            pool = self.pools[config] = SmtpPool(config)
        return pool

    async def _close_pools(self) -> None:
        pools, self.pools = list(self.pools.values()), {}
        await asyncio.gather(*(pool.close() for pool in pools), return_exceptions=True)

    def stop(self) -> None:
        if not self.loop.is_running():
            return
        try:
            self.submit(self._close_pools()).result(SHUTDOWN_TIMEOUT)
        except (concurrent.futures.TimeoutError, RuntimeError) as exc:
            logger.warning("SMTP pools did not close cleanly: %s", exc)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(SHUTDOWN_TIMEOUT)
        if not self.thread.is_alive():
            self.loop.close()


_lock = threading.Lock()
_runner: _LoopThread | None = None
# Runners inherited through fork: kept referenced so that garbage collection in the child
# never closes (or shuts down TLS on) sockets that still belong to the parent.
_abandoned: list[_LoopThread] = []


def _after_fork_in_child() -> None:
    global _lock, _runner
    _lock = threading.Lock()  # the parent may have held it while forking
    if _runner is not None:
        _abandoned.append(_runner)
        _runner = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def _get_runner() -> _LoopThread:
    global _runner
    with _lock:
        if _runner is None or _runner.pid != os.getpid():
            if _runner is not None:
                _abandoned.append(_runner)
            _runner = _LoopThread()
        return _runner


async def _send_one(
    runner: _LoopThread,
    config: SmtpConfig,
    envelope: Envelope,
    before_send: BeforeSend | None,
    on_accepted: AcceptedHook | None,
) -> SendResult:
    pool = runner.pool(config)
    if before_send is not None:
        await before_send(envelope)
    return await pool.send(envelope, on_accepted=on_accepted)


def send_envelopes(
    config: SmtpConfig,
    envelopes: Iterable[Envelope],
    *,
    concurrency: int | None = None,
    before_send: BeforeSend | None = None,
    on_accepted: AcceptedHook | None = None,
    heartbeat: float | None = None,
) -> Iterator[SendResult | None]:
    """Send ``envelopes`` through the process's pool for ``config``; yield results as they complete.

    Envelopes are pulled lazily, at most ``concurrency`` (default: ``config.pool_size``) in
    flight, so the caller can record outcomes while sending continues. ``before_send`` is
    awaited on the loop before each send (a shared rate limiter, for example); an exception
    from it ends the iteration. ``on_accepted`` is awaited on the loop with each accepted
    message's result before its connection carries the next one (see ``SmtpPool.send``). If the caller stops iterating early, the sends already in
    flight are allowed to finish (never cut mid-DATA) and their results are dropped. With
    ``heartbeat``, None is yielded whenever that many seconds pass without a result, so the
    caller can flush, renew leases or decide to stop while the server is slow.
    """
    runner = _get_runner()
    limit = max(1, concurrency or config.pool_size)
    source = iter(envelopes)
    pending: set[concurrent.futures.Future[SendResult]] = set()
    exhausted = False
    try:
        while True:
            batch: list[Coroutine[Any, Any, SendResult]] = []
            while not exhausted and len(pending) + len(batch) < limit:
                try:
                    envelope = next(source)
                except StopIteration:
                    exhausted = True
                    break
                batch.append(_send_one(runner, config, envelope, before_send, on_accepted))
            if batch:
                pending.update(runner.submit_many(batch))
            if not pending:
                return
            done, pending = concurrent.futures.wait(
                pending, timeout=heartbeat, return_when=concurrent.futures.FIRST_COMPLETED
            )
            if not done:
                yield None
            for future in done:
                yield future.result()
    finally:
        if pending:
            logger.warning(
                "send_envelopes stopped early; waiting for %s sends in flight", len(pending)
            )
            concurrent.futures.wait(pending, timeout=config.timeout * 3)


def shutdown() -> None:
    """Close every pool (QUIT) and stop this process's loop thread; safe to call twice."""
    global _runner
    with _lock:
        runner, _runner = _runner, None
    if runner is not None and runner.pid == os.getpid():
        runner.stop()


atexit.register(shutdown)
