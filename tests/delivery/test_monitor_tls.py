"""The SMTP check never sends credentials over TLS the sender would refuse (issue 14, item 3).

Each test points the check (the function, the smtp_check command, the periodic task) at a
real aiosmtpd server with AUTH whose TLS the client must not trust, and asserts from the
server's own log that no AUTH command arrived, and that the result says why.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.core.management import call_command

from delivery.models import SmtpServer
from delivery.monitor import services as monitor_services
from delivery.monitor.checks import CheckTarget, check_smtp, findings_for
from delivery.monitor.models import SmtpAlert, SmtpCheck
from delivery.monitor.tasks import check_smtp_server
from tests.smtp_server import ScriptedSmtpServer, TlsFiles, _make_ca, _name

USERS = {"skylark": "secret"}


def _leaf(
    directory: Path,
    *,
    names: list[str],
    days: tuple[int, int] = (-1, 30),
    self_signed: bool = False,
) -> TlsFiles:
    """A trusted CA (ca.pem) and a server certificate for ``names``, valid over ``days``."""
    ca_key, ca_cert = _make_ca("Monitor Test CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(_name(names[0]) if self_signed else ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
    )
    cert = builder.sign(key if self_signed else ca_key, hashes.SHA256())
    pem = serialization.Encoding.PEM
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (directory / "server.pem").write_bytes(cert.public_bytes(pem))
    (directory / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return TlsFiles(
        ca_file=str(directory / "ca.pem"),
        cert_file=str(directory / "server.pem"),
        key_file=str(directory / "server.key"),
        other_ca_file=str(directory / "ca.pem"),
    )


@pytest.fixture
def server_with(tmp_path):
    """A server with AUTH and a certificate made for the test (names, validity, issuer)."""
    servers: list[ScriptedSmtpServer] = []

    def start(*, implicit_tls: bool = False, **cert) -> ScriptedSmtpServer:
        files = _leaf(tmp_path / f"cert{len(servers)}", **cert)
        server = ScriptedSmtpServer(files, users=USERS, implicit_tls=implicit_tls).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def check(server: ScriptedSmtpServer, **overrides):
    fields = {
        "host": server.host,
        "port": server.port,
        "security": server.security,
        "ca_file": server.ca_file,
        "username": "skylark",
        "password": "secret",
        "timeout": 5.0,
    }
    fields.update(overrides)
    return asyncio.run(check_smtp(CheckTarget(**fields)))


def assert_no_auth_sent(server: ScriptedSmtpServer, result) -> None:
    assert server.connections, "the check never reached the server"
    assert server.commands("AUTH") == []  # from the server's own log
    assert all(log.auth_user is None for log in server.connections)
    assert result.auth_ok is None
    assert "the password was not sent" in result.auth_error


@pytest.mark.parametrize("implicit_tls", [False, True], ids=["starttls", "implicit-tls"])
def test_untrusted_ca_gets_no_auth_and_the_check_reports_it(
    smtp_server_factory, smtp_tls_files, implicit_tls
):
    server = smtp_server_factory(users=USERS, implicit_tls=implicit_tls)
    result = check(server, ca_file=smtp_tls_files.other_ca_file)
    assert_no_auth_sent(server, result)
    assert result.cert_verified is False
    assert "unable to get local issuer" in result.cert_error
    assert "did not verify" in result.auth_error
    assert result.cert_subject == "localhost"  # still described, for the operator
    found = {f.code: f for f in findings_for(result, credentials=True)}
    assert found["tls_failed"].severity == "down"
    assert "unable to get local issuer" in found["tls_failed"].message


@pytest.mark.parametrize("implicit_tls", [False, True], ids=["starttls", "implicit-tls"])
def test_certificate_for_another_host_name_gets_no_auth(server_with, implicit_tls):
    # Signed by a CA the client trusts, but for another name: the chain alone is not enough.
    server = server_with(names=["mail.other.example"], implicit_tls=implicit_tls)
    result = check(server)
    assert_no_auth_sent(server, result)
    assert result.cert_verified is False and "mismatch" in result.cert_error
    assert result.cert_hostname_match is False
    codes = {f.code for f in findings_for(result, credentials=True)}
    assert {"tls_failed", "cert_hostname"} <= codes


def test_expired_certificate_gets_no_auth(server_with):
    server = server_with(names=["localhost", "127.0.0.1"], days=(-30, -1))
    result = check(server)
    assert_no_auth_sent(server, result)
    assert "expired" in result.cert_error
    assert {"tls_failed", "cert_expired"} <= {f.code for f in findings_for(result)}


def test_self_signed_certificate_gets_no_auth_against_the_system_store(server_with):
    server = server_with(names=["localhost", "127.0.0.1"], self_signed=True)
    result = check(server, ca_file="")
    assert_no_auth_sent(server, result)
    assert "self-signed" in result.cert_error or "self signed" in result.cert_error


def test_trusted_certificate_for_this_host_does_get_auth(server_with):
    # The control: the same set-up with a good certificate authenticates.
    server = server_with(names=["localhost", "127.0.0.1"])
    result = check(server)
    assert result.cert_verified is True and result.auth_ok is True
    assert server.commands("AUTH") == ["AUTH PLAIN"]


def test_stripped_starttls_downgrade_never_authenticates_in_the_clear(smtp_server_factory):
    # An attacker on the path removes STARTTLS and offers AUTH in the clear.
    server = smtp_server_factory(users=USERS, starttls=False, auth_require_tls=False)
    result = check(server, security="starttls")
    assert_no_auth_sent(server, result)
    assert result.plaintext_auth_offered and not result.tls
    assert "not encrypted" in result.auth_error and "STARTTLS" in result.auth_error
    # Configured without TLS at all: credentials are never sent either.
    result = check(server, security="none")
    assert_no_auth_sent(server, result)
    assert "require security" in result.auth_error


def test_auth_offered_only_before_starttls_is_never_used(smtp_server_factory):
    server = smtp_server_factory(users=USERS, auth_require_tls=False)
    handler = server._controller.handler
    original = handler.handle_EHLO

    async def auth_only_in_the_clear(smtp, session, envelope, hostname, responses):
        responses = await original(smtp, session, envelope, hostname, responses)
        return [r for r in responses if not (smtp.is_tls and r.startswith("250-AUTH"))]

    handler.handle_EHLO = auth_only_in_the_clear
    result = check(server)
    assert result.tls and result.cert_verified is True and result.plaintext_auth_offered
    assert server.commands("AUTH") == []
    assert result.auth_ok is False and "no PLAIN or LOGIN" in result.auth_error


def test_smtp_check_command_reports_the_tls_failure_and_sends_no_auth(
    smtp_server_factory, smtp_tls_files, capsys
):
    server = smtp_server_factory(users=USERS)
    url = f"{server.url}&ca_file={smtp_tls_files.other_ca_file}"
    call_command("smtp_check", url, "--json")
    payload = json.loads(capsys.readouterr().out)
    assert server.connections and server.commands("AUTH") == []
    assert payload["health"] == "down" and payload["auth_ok"] is None
    assert payload["cert_verified"] is False
    assert "tls_failed" in {f["code"] for f in payload["findings"]}
    call_command("smtp_check", url)
    text = capsys.readouterr().out
    assert "DOWN" in text and "the password was not sent" in text
    assert server.commands("AUTH") == []


def test_periodic_monitor_task_sends_no_auth_and_alerts(
    db, smtp_server_factory, smtp_tls_files, settings
):
    settings.EDM_SMTP_TLS_CA_FILE = smtp_tls_files.other_ca_file
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    server = smtp_server_factory(users=USERS)
    row = SmtpServer.objects.create(
        name="main", host=server.host, port=server.port, security="starttls", username="skylark"
    )
    row.set_password("secret")
    row.save()
    check_smtp_server(row.pk)
    assert server.connections and server.commands("AUTH") == []
    stored = SmtpCheck.objects.get(server=row)
    assert stored.health == "down" and stored.auth_ok is None
    assert SmtpAlert.objects.filter(code="tls_failed", resolved_at=None).count() == 1
    assert monitor_services.server_health(row) == "down"  # routes go around it, as sends would


def test_verification_turned_off_is_explicit_and_reported(smtp_server_factory, smtp_tls_files):
    # The operator's documented opt-out (verify_tls=0, as the sender reads it): the check
    # then does what the sender does, and says that verification is off.
    server = smtp_server_factory(users=USERS)
    target = monitor_services.target_for_url(
        f"{server.url}&ca_file={smtp_tls_files.other_ca_file}&verify_tls=0"
    )
    assert target.verify_tls is False
    result = asyncio.run(check_smtp(target))
    assert result.auth_ok is True and result.cert_verified is None
    assert "tls_verify_off" in {f.code for f in findings_for(result)}
    # Without the parameter, verification is on.
    assert monitor_services.target_for_url(server.url).verify_tls is True
