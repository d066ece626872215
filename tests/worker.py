"""A real Celery worker (with beat) in a subprocess, against the test database and real Redis.

Loaded as a pytest plugin from tests/conftest.py. Tests that use it need committed data:
use the ``transactional_db`` fixture.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _database_env() -> dict[str, str]:
    from django.db import connection

    config = connection.settings_dict
    if connection.vendor == "sqlite":
        return {"EDM_SQLITE_PATH": str(config["NAME"])}
    user = config.get("USER") or "postgres"
    host = config.get("HOST") or "127.0.0.1"
    port = config.get("PORT") or 5432
    return {"DATABASE_URL": f"postgres://{user}@{host}:{port}/{config['NAME']}"}


class WorkerProcess:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, *, concurrency: int = 2, queues: str = "", beat: bool = True) -> WorkerProcess:
        """``queues``: comma-separated queues to serve (default: the session's queue)."""
        queue = queues or f"{self.env['EDM_CELERY_QUEUE']},{self.env['EDM_CONTROL_QUEUE']}"
        argv = [sys.executable, "-m", "celery", "-A", "config", "worker"]
        argv += ["-B"] if beat else []
        argv += [f"--concurrency={concurrency}", "-Q", queue, "--loglevel=INFO"]
        name = f"{queue.replace(',', '+')}-{id(self):x}@%h"
        argv += ["--without-gossip", "--without-mingle", "-n", name]
        argv += [f"--schedule={self.log_path.parent / 'beat-schedule'}"]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        return self

    def stop(self, *, timeout: float = 30) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def worker_env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for a worker subprocess: same database and Redis as the test, own queue."""
    from django.conf import settings

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.pop("DATABASE_URL", None)
    env.update(_database_env())
    if not settings.EDM_EMBEDDED_REDIS:
        env["REDIS_URL"] = redis_url
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "SECRET_KEY": settings.SECRET_KEY,
            "EDM_VAR_DIR": str(settings.VAR_DIR),
            "EDM_CELERY_QUEUE": settings.CELERY_TASK_DEFAULT_QUEUE,
            "EDM_CONTROL_QUEUE": settings.EDM_CONTROL_QUEUE,
            "EDM_SWEEP_SECONDS": "1",
            "EDM_RETRY_BASE_SECONDS": "1",
            "EDM_RETRY_MAX_SECONDS": "2",
            "EDM_SMTP_TIMEOUT_SECONDS": "5",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@pytest.fixture
def celery_worker_factory(worker_env: dict[str, str], tmp_path: Path) -> Iterator:
    workers: list[WorkerProcess] = []

    def start(
        *, queues: str = "", concurrency: int = 2, beat: bool = True, **env: str
    ) -> WorkerProcess:
        worker = WorkerProcess({**worker_env, **env}, tmp_path / f"worker-{len(workers)}.log")
        workers.append(worker.start(queues=queues, concurrency=concurrency, beat=beat))
        return worker

    yield start
    for worker in workers:
        worker.stop()


def wait_until(predicate, *, timeout: float = 60.0, interval: float = 0.2, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
