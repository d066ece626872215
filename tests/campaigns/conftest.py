"""Fixtures for driving the send path by hand against the scripted SMTP server."""

from __future__ import annotations

import pytest


@pytest.fixture
def smtp_settings(settings, smtp_server):
    """The default route points at the test SMTP server (STARTTLS + AUTH, test CA)."""
    settings.EDM_SMTP_URL = smtp_server.url
    settings.EDM_SMTP_TLS_CA_FILE = smtp_server.ca_file
    settings.EDM_SMTP_TIMEOUT_SECONDS = 5
    return smtp_server


@pytest.fixture
def no_broker(monkeypatch):
    """Record enqueued tasks instead of sending them to Redis: tests drive tasks by hand."""
    from campaigns import tasks

    enqueued: list[tuple[str, tuple]] = []
    for name in ("campaign_dispatch", "campaign_send_batch", "campaign_resume"):
        task = getattr(tasks, name)
        monkeypatch.setattr(task, "delay", lambda *a, _n=name: enqueued.append((_n, a)))
        monkeypatch.setattr(task, "delay_on_commit", lambda *a, _n=name: enqueued.append((_n, a)))
        monkeypatch.setattr(
            task, "apply_async", lambda a=(), k=None, _n=name, **o: enqueued.append((_n, tuple(a)))
        )
    return enqueued
