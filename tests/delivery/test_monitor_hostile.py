"""SMTP monitor against a hostile server (aiosmtpd scripted with raw bytes): whatever the
server answers, the check comes back as a result that the database can store, within its
timeout and bounded memory; it never raises (which would fail the periodic task and make the
admin's "Check now" an HTTP 500)."""

from __future__ import annotations

import asyncio
import time

import pytest
from django.utils import timezone

from delivery.monitor import services as monitor_services
from delivery.monitor.checks import CheckTarget, check_smtp
from delivery.monitor.models import SmtpCheck


def _target(server, **overrides) -> CheckTarget:
    fields = {"host": server.host, "port": server.port, "security": "none", "timeout": 3.0}
    fields.update(overrides)
    return CheckTarget(**fields)


def _check(server, **overrides):
    return asyncio.run(check_smtp(_target(server, **overrides)))


@pytest.mark.django_db
def test_a_nul_byte_in_the_greeting_and_ehlo_is_stored_cleaned(smtp_server_factory):
    server = smtp_server_factory(starttls=False)
    server.script("connect", b"220 mx\x00.example ESMTP")
    server.script("ehlo", b"250-mx\x00.example\r\n250 AUTH PLAIN\x00LOGIN")
    target = _target(server)
    result = asyncio.run(check_smtp(target))
    assert result.up
    assert "\x00" not in result.banner and "\ufffd" in result.banner
    # PostgreSQL refuses NUL in text and \u0000 in jsonb: the check must still be recorded.
    check = monitor_services.smtp_check_record(
        server=None, target=target, result=result, now=timezone.now()
    )
    stored = SmtpCheck.objects.get(pk=check.pk)
    assert "\x00" not in str(stored.result)


@pytest.mark.django_db
def test_a_nul_byte_in_a_refusal_is_stored_cleaned(smtp_server_factory):
    server = smtp_server_factory(starttls=False)
    server.script("connect", b"554 5.3.2 go\x00away")
    target = _target(server)
    result = asyncio.run(check_smtp(target))
    assert not result.up and "\x00" not in result.error
    monitor_services.smtp_check_record(
        server=None, target=target, result=result, now=timezone.now()
    )
    assert SmtpCheck.objects.get().error == result.error


def test_a_size_in_other_digits_is_no_crash(smtp_server_factory):
    server = smtp_server_factory(starttls=False)
    # "²" and "٣" are digits to str.isdigit() and int() takes "٣": neither is an SMTP number.
    server.script("ehlo", "250-mx.example\r\n250 SIZE \u00b2")
    result = _check(server)
    assert result.up and result.size_limit == 0
    server.clear_script()
    server.script("ehlo", "250-mx.example\r\n250 SIZE 1\u0663")
    assert _check(server).size_limit == 0


def test_a_reply_code_in_other_digits_is_malformed(smtp_server_factory):
    server = smtp_server_factory(starttls=False)
    server.script("connect", "2\u06632 hello")  # int("2٣2") == 232
    result = _check(server)
    assert not result.up and "malformed reply" in result.error


def test_a_reply_line_over_the_stream_limit_is_an_error(smtp_server_factory):
    server = smtp_server_factory(starttls=False)
    server.script("connect", b"220 " + b"x" * 200_000)
    result = _check(server)
    assert not result.up and result.stage == "greeting" and "too long" in result.error


def test_an_endless_reply_ends_within_the_timeout(smtp_server_factory):
    server = smtp_server_factory(starttls=False)
    # 20,000 continuation lines (2 MB) and no last line: a reply is at most 1,000 lines.
    server.script("connect", b"\r\n".join([b"220-" + b"y" * 100] * 20_000))
    started = time.monotonic()
    result = _check(server)
    assert not result.up and result.stage == "greeting" and "lines" in result.error
    assert time.monotonic() - started < 3


def test_a_trickling_reply_is_bounded_by_the_timeout_as_a_whole():
    # A line every 0.2 s never trips a per-line timeout; the reply's deadline ends it.
    async def trickle(reader, writer):
        try:
            for _ in range(100):
                writer.write(b"220-still greeting\r\n")
                await writer.drain()
                await asyncio.sleep(0.2)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def run():
        server = await asyncio.start_server(trickle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await check_smtp(
                CheckTarget(host="127.0.0.1", port=port, security="none", timeout=1.0)
            )
        finally:
            server.close()

    started = time.monotonic()
    result = asyncio.run(run())
    assert not result.up and result.stage == "greeting" and "timed out" in result.error
    assert time.monotonic() - started < 3
