"""Start and stop the processes of a local Skylark (embedded Redis, worker, beat, sink, web).

Used by `manage.py run` and `manage.py demo`; production runs each process on its own
(see docs/operations.md).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings

from config import embedded_redis

logger = logging.getLogger(__name__)


class ProcessGroup:
    """Child processes that live and die together; stopped gracefully (SIGTERM) on exit."""

    def __init__(self, *, log_dir: Path | None = None) -> None:
        self.log_dir = log_dir
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.argvs: dict[str, list[str]] = {}
        self.redis: subprocess.Popen | None = None

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start_redis(self) -> None:
        if settings.EDM_EMBEDDED_REDIS:
            self.redis = embedded_redis.start(settings.VAR_DIR)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        output = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = (self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv,
            cwd=settings.BASE_DIR,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            start_new_session=True,
        )
        self.children.append((name, process))
        self.argvs[name] = argv
        return process

    def start_manage(self, name: str, *args: str) -> subprocess.Popen:
        return self.start(name, [sys.executable, "manage.py", *args])

    def start_worker(self, *, concurrency: int | None = None, beat: bool = True) -> None:
        concurrency = concurrency or os.cpu_count() or 2
        argv = [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO"]
        argv += [
            f"--concurrency={concurrency}",
            "-Q",
            settings.EDM_WORKER_QUEUES,
            "--without-gossip",
        ]
        argv += ["--without-mingle", "-n", f"skylark-{os.getpid()}@%h"]
        self.start("worker", argv)
        # Transactional messages (API, relay) have their own queue and their own worker, so a
        # running campaign never delays them.
        priority = [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO"]
        priority += ["--concurrency=2", "-Q", settings.EDM_PRIORITY_QUEUE, "--without-gossip"]
        priority += ["--without-mingle", "-n", f"skylark-priority-{os.getpid()}@%h"]
        self.start("priority-worker", priority)
        if beat:
            schedule = settings.VAR_DIR / "celerybeat-schedule"
            self.start(
                "beat",
                [sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel=INFO",
                 f"--schedule={schedule}"],
            )  # fmt: skip

    def wait_for_worker(self, *, timeout: float = 60.0) -> None:
        from config.celery import app

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if app.control.ping(timeout=1.0):
                    return
            except Exception:  # noqa: BLE001 - broker not up yet
                time.sleep(0.5)
            self.check_alive()
        raise RuntimeError("the Celery worker did not answer in time; see var/log/worker.log")

    def check_alive(self) -> None:
        for name, process in self.children:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode}")

    def restart_dead(self, stdout=None) -> None:
        """Start again any process that exited (a worker can die when Redis restarts)."""
        for index, (name, process) in enumerate(self.children):
            if process.poll() is None:
                continue
            if stdout is not None:
                stdout.write(f"{name} exited with code {process.returncode}: restarting it")
            self.children.pop(index)
            self.start(name, self.argvs[name])
            return  # one at a time; the next call looks again

    def stop(self) -> None:
        """Stop gracefully: workers get SIGTERM on their main process only.

        Celery's warm shutdown then lets each pool process finish and record its chunk; a
        SIGTERM to the whole group would kill the pool processes mid-chunk (and the messages
        they had sent but not recorded would be sent again).
        """
        for name, process in reversed(self.children):
            if process.poll() is None:
                if "worker" in name:
                    process.send_signal(signal.SIGTERM)
                else:
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + settings.EDM_TASK_SECONDS + 30
        for _, process in reversed(self.children):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                try:
                    os.killpg(process.pid, signal.SIGKILL)  # anything it left behind
                except ProcessLookupError:
                    pass
        self.children.clear()
        embedded_redis.stop(self.redis)
        self.redis = None


def ensure_admin(stdout) -> None:
    """Create an admin user on first run and say how to log in."""
    import secrets

    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    password_file = settings.VAR_DIR / "admin-password.txt"
    if user_model.objects.filter(is_superuser=True).exists():
        if password_file.exists():
            stdout.write(f"Admin login: admin / {password_file.read_text().strip()}")
        return
    password = secrets.token_urlsafe(12)
    user_model.objects.create_superuser("admin", "admin@skylark.localhost", password)
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    stdout.write(f"Created the admin user: admin / {password}  (kept in {password_file})")
