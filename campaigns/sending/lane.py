"""The database lane: one thread per worker process, with a connection of its own, that runs
a batch task's claims and outcome writes while the task's thread keeps sending."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class _InlineLane:
    """Runs database work at once, in the calling thread (SQLite; inside a transaction)."""

    background = False  # nothing is claimed ahead: it would only hold rows longer

    def submit(self, function: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(function(*args))
        except Exception as exc:  # raised where the result is asked for, as with a thread
            future.set_exception(exc)
        return future


class _ThreadLane:
    """One thread with a database connection of its own that runs a batch task's outcome
    writes and its next claim, in order, while the task's thread renders and hands messages
    to the SMTP pool: the server's time then overlaps the sending instead of stalling it.

    One per worker process, reused by its tasks (a new one after a fork), so its connection
    lives as long as CONN_MAX_AGE allows instead of one connection per task.
    """

    background = True

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=_LANE_THREAD)

    def begin(self) -> _ThreadLane:
        """At the start of a task: drop the lane's connection if broken or too old (what
        Celery does for the task's own connection). Not waited for: the previous task's
        last writes may still be running, and the check runs after them, before this
        task's work."""
        from django.db import connection

        # Looked up in the lane thread: that thread's own connection.
        self._executor.submit(lambda: connection.close_if_unusable_or_obsolete())
        return self

    def submit(self, function: Callable[..., T], *args: Any) -> Future[T]:
        return self._executor.submit(function, *args)

    def shutdown(self) -> None:
        from django.db import connection

        self._executor.submit(lambda: connection.close()).result()
        self._executor.shutdown(wait=True)


_lane: _ThreadLane | None = None
_LANE_THREAD = "skylark-db"


def database_lane_close() -> None:
    """Run what is queued on this process's database lane, then close it and its connection
    (a stopping worker process, on worker_process_shutdown; tests, before dropping their
    database)."""
    global _lane
    lane, _lane = _lane, None
    if lane is not None and lane.pid == os.getpid():
        lane.shutdown()


def database_lane() -> _InlineLane | _ThreadLane:
    """The lane for a batch task's database work: this process's thread on PostgreSQL, else
    inline (SQLite, a caller inside a transaction, a task run from the lane itself)."""
    from django.db import connection

    global _lane
    # Another connection could not see the rows of a transaction the caller holds open; and
    # SQLite writes in this process anyway (a second writer would only wait for the lock).
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return _InlineLane()
    if threading.current_thread().name.startswith(_LANE_THREAD):
        # A task run from the lane itself (Celery in eager mode, a task's tail enqueueing
        # the rest of its range): queueing work for its own thread and waiting for it
        # would never end.
        return _InlineLane()
    if _lane is None or _lane.pid != os.getpid():
        _lane = _ThreadLane()
    return _lane.begin()
