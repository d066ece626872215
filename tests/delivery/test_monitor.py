"""SMTP monitor: each finding against a real aiosmtpd server configured to show it."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.core import mail
from django.core.management import call_command

from delivery.models import SmtpServer
from delivery.monitor import services as monitor_services
from delivery.monitor.checks import CheckTarget, _hostname_matches, check_smtp, findings_for
from delivery.monitor.models import SmtpAlert, SmtpCheck


def run_check(server, **overrides):
    fields = {
        "host": server.host,
        "port": server.port,
        "security": server.security,
        "ca_file": server.ca_file,
        "timeout": 5.0,
    }
    fields.update(overrides)
    return asyncio.run(check_smtp(CheckTarget(**fields)))


def codes(result, **kwargs):
    return {f.code for f in findings_for(result, **kwargs)}


def test_healthy_starttls_server_with_auth(smtp_server):
    result = run_check(smtp_server, username="skylark", password="secret")
    assert result.up and not result.error
    assert result.connect_ms is not None and result.greeting_ms is not None
    assert result.tls and result.tls_version.startswith("TLSv1.")
    assert result.tls_cipher
    assert result.starttls_offered
    assert result.cert_verified is True and result.cert_hostname_match is True
    assert 25 < result.cert_days_left < 31
    assert result.cert_subject == "localhost" and result.cert_issuer == "Skylark Test CA"
    assert {"PLAIN", "LOGIN"} <= set(result.auth_mechanisms)
    assert result.auth_ok is True
    assert result.plaintext_auth_offered is False  # the fixture only offers AUTH after TLS
    assert result.size_limit == 10 * 1024 * 1024
    assert result.eightbitmime and result.smtputf8 and result.dsn
    assert not result.pipelining  # aiosmtpd does not offer it, and the check says so
    assert codes(result, credentials=True) == set()


def test_wrong_password_is_auth_failed(smtp_server):
    result = run_check(smtp_server, username="skylark", password="wrong")
    assert result.up and result.auth_ok is False
    assert "auth_failed" in codes(result, credentials=True)


def test_certificate_near_expiry(smtp_server):
    result = run_check(smtp_server)
    assert "cert_expiring" not in codes(result, warn_days=14)
    assert "cert_expiring" in codes(result, warn_days=60)


def test_untrusted_chain_is_reported_and_the_certificate_still_described(
    smtp_server, smtp_tls_files
):
    result = run_check(smtp_server, ca_file=smtp_tls_files.other_ca_file)
    assert result.up and result.tls
    assert result.cert_verified is False and "unable to get local issuer" in result.cert_error
    assert result.cert_subject == "localhost"
    assert "cert_untrusted" in codes(result)


def test_no_starttls_means_no_tls(smtp_server_factory):
    server = smtp_server_factory(starttls=False)
    result = run_check(server, security="starttls")
    assert result.up and not result.tls and not result.starttls_offered
    assert "no_tls" in codes(result)


def test_plaintext_auth_before_starttls(smtp_server_factory):
    server = smtp_server_factory(users={"u": "p"}, auth_require_tls=False)
    result = run_check(server, username="u", password="p")
    assert result.plaintext_auth_offered
    assert "plaintext_auth" in codes(result)
    assert result.auth_ok is True  # over TLS: the monitor never sends a password in clear


def test_implicit_tls(smtp_server_factory):
    server = smtp_server_factory(implicit_tls=True, users={"u": "p"})
    result = run_check(server, username="u", password="p")
    assert result.up and result.tls and result.security == "tls"
    assert not result.starttls_offered and result.auth_ok is True


def test_size_smtputf8_dsn_as_offered(smtp_server_factory):
    server = smtp_server_factory(starttls=False, size=1000, smtputf8=False, dsn=False)
    result = run_check(server, security="none")
    assert result.size_limit == 1000
    assert not result.smtputf8 and not result.dsn
    bare = smtp_server_factory(starttls=False, size=None)
    assert run_check(bare, security="none").size_limit is None


def test_closed_port_is_down():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = asyncio.run(check_smtp(CheckTarget(host="127.0.0.1", port=port, timeout=2)))
    assert not result.up and result.stage == "connect"
    assert codes(result) == {"down"}


def test_refusing_greeting_is_down(smtp_server_factory):
    server = smtp_server_factory(starttls=False)
    server.script("connect", "554 5.3.2 go away")
    result = run_check(server, security="none")
    assert not result.up and "554" in result.error


def test_latency_over_twice_the_median(smtp_server_factory):
    server = smtp_server_factory(starttls=False)
    server.script("connect", stall=0.3, times=1)
    result = run_check(server, security="none")
    assert result.greeting_ms >= 290
    assert "latency" in codes(result, median_ms=20.0)
    assert "latency" not in codes(result, median_ms=200.0)


def test_hostname_match_rules():
    assert _hostname_matches("mail.example.com", ["*.example.com"])
    assert not _hostname_matches("a.mail.example.com", ["*.example.com"])
    assert not _hostname_matches("smtp.other.com", ["mail.example.com"])
    assert _hostname_matches("127.0.0.1", ["localhost", "127.0.0.1"])


# -- history, health, alerts -------------------------------------------------------------------


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    _Hook.received = []
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", _Hook.received
    server.shutdown()


def test_down_server_alerts_once_by_email_and_webhook(db, smtp_server_factory, settings, webhook):
    url, received = webhook
    settings.EDM_ALERT_EMAILS = ["ops@example.com"]
    settings.EDM_ALERT_WEBHOOK = url
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    server = smtp_server_factory(starttls=False)
    row = SmtpServer.objects.create(
        name="main", host=server.host, port=server.port, security="starttls"
    )
    assert monitor_services.smtp_check_run(server=row).health == "degraded"  # no TLS
    assert [r["code"] for r in received] == ["no_tls"]
    assert monitor_services.server_health(row) == "degraded"
    server.stop()
    for _ in range(2):
        check = monitor_services.smtp_check_run(server=row)
    assert check.health == "down" and not check.up
    assert monitor_services.server_health(row) == "down"
    alerts = SmtpAlert.objects.filter(code="down")
    assert alerts.count() == 1  # one alert per episode, not per check
    assert [m.to for m in mail.outbox if "down" in m.subject] == [["ops@example.com"]]
    assert any(r["code"] == "down" for r in received)
    assert alerts.get().delivered == {"email": "sent", "webhook": "204"}
    assert SmtpCheck.objects.filter(server=row).count() == 3
    # While it is down, "no TLS" is not a finding any more: that alert is resolved.
    assert SmtpAlert.objects.get(code="no_tls").resolved_at is not None


def test_tls_that_disappears_is_a_warning_even_without_configured_security():
    from delivery.monitor.checks import CheckResult

    result = CheckResult(host="h", port=25, security="none", up=True)
    assert {f.severity for f in findings_for(result) if f.code == "no_tls"} == {"info"}
    assert {f.severity for f in findings_for(result, had_tls=True) if f.code == "no_tls"} == {
        "warning"
    }


def test_server_health_without_history_is_ok(db):
    row = SmtpServer.objects.create(name="new", host="127.0.0.1", port=25, security="none")
    assert monitor_services.server_health(row) == "ok"


def test_smtp_check_command_json(smtp_server, capsys):
    call_command("smtp_check", smtp_server.url + f"&ca_file={smtp_server.ca_file}", "--json")
    payload = json.loads(capsys.readouterr().out)
    assert payload["health"] == "ok" and payload["auth_ok"] is True
    assert payload["tls_version"].startswith("TLSv1.")


def test_admin_status_page_shows_health_and_a_latency_chart(admin_client, smtp_server, settings):
    settings.EDM_SMTP_URL = smtp_server.url + f"&ca_file={smtp_server.ca_file}"
    monitor_services.smtp_check_run()
    response = admin_client.get("/admin/delivery/smtpcheck/status/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "<svg" in body and "<polyline" in body
    assert "EDM_SMTP_URL" in body and ">OK<" in body
