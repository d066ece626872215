"""The SMTP relay: AUTH only after TLS, only with a key that may send; no open relaying."""

from __future__ import annotations

import smtplib
import ssl

import pytest

from api import relay_glue, services
from api.models import Scope, TransactionalMessage
from api.relay import relay_start

MESSAGE = (
    b"From: App <app@shop.test>\r\nTo: a@example.com\r\nBcc: hidden@example.com\r\n"
    b"Subject: Receipt\r\n\r\nThanks for your order.\r\n"
)


@pytest.fixture
def relay_factory(smtp_tls_files):
    controllers = []

    def start(*, implicit_tls: bool = False):
        controller = relay_start(
            authenticate=relay_glue.authenticate,
            accept=relay_glue.accept,
            host="127.0.0.1",
            port=0,
            cert_file=smtp_tls_files.cert_file,
            key_file=smtp_tls_files.key_file,
            implicit_tls=implicit_tls,
        )
        controllers.append(controller)
        return controller

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
def key(transactional_db, redis_client):
    return services.api_key_create(application="app", scopes=[Scope.MESSAGES_SEND])


@pytest.fixture
def tls(smtp_tls_files):
    return ssl.create_default_context(cafile=smtp_tls_files.ca_file)


def starttls_client(relay, tls) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", relay.port, timeout=10)
    client.ehlo()
    client.starttls(context=tls)
    client.ehlo()
    return client


def test_no_auth_offered_and_nothing_accepted_before_starttls(relay_factory, key):
    relay = relay_factory()
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
        client.ehlo()
        assert "starttls" in client.esmtp_features
        assert "auth" not in client.esmtp_features
        code, _ = client.docmd("AUTH", "PLAIN AGtleQBzZWNyZXQ=")
        assert code == 530
        code, _ = client.mail("app@shop.test")
        assert code == 530
    assert not TransactionalMessage.objects.exists()


def test_unauthenticated_client_over_tls_cannot_relay(relay_factory, key, tls):
    relay = relay_factory()
    with starttls_client(relay, tls) as client:
        assert "auth" in client.esmtp_features
        code, _ = client.mail("app@shop.test")
        assert code == 530
        code, _ = client.rcpt("a@example.com")
        assert code == 530 or code >= 500
    assert not TransactionalMessage.objects.exists()


@pytest.mark.parametrize("which", ["wrong", "revoked", "no_scope"])
def test_bad_keys_are_refused(relay_factory, key, tls, which):
    api_key, secret = key
    if which == "wrong":
        secret = f"sky_{api_key.prefix}_" + "B" * 43
    elif which == "revoked":
        services.api_key_revoke(api_key=api_key)
    else:
        _, secret = services.api_key_create(application="ro", scopes=[Scope.MESSAGES_READ])
    relay = relay_factory()
    with starttls_client(relay, tls) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as error:
            client.login("anyone", secret)
        assert error.value.smtp_code == 535
        code, _ = client.mail("app@shop.test")
        assert code == 530
    assert not TransactionalMessage.objects.exists()


def test_authenticated_submission_becomes_one_message_per_envelope_recipient(
    relay_factory, key, tls
):
    _, secret = key
    relay = relay_factory()
    with starttls_client(relay, tls) as client:
        client.login("whatever", secret)
        refused = client.sendmail("app@shop.test", ["a@example.com", "hidden@example.com"], MESSAGE)
    assert refused == {}
    messages = TransactionalMessage.objects.select_related("delivery").order_by("delivery__email")
    assert [m.delivery.email for m in messages] == ["a@example.com", "hidden@example.com"]
    for message in messages:
        raw = bytes(message.raw)
        assert message.source == "relay" and message.from_email == "app@shop.test"
        assert b"Thanks for your order." in raw
        assert b"Bcc:" not in raw  # never travels with the message
        assert b"Message-ID: <" in raw and b"Date: " in raw  # added by the submission server
        assert message.subject == "Receipt"


def test_implicit_tls_with_auth_login(relay_factory, key, tls):
    _, secret = key
    relay = relay_factory(implicit_tls=True)
    with smtplib.SMTP_SSL("127.0.0.1", relay.port, context=tls, timeout=10) as client:
        client.ehlo()
        code, _ = client.mail("app@shop.test")
        assert code == 530
        client.rset()
        client.user, client.password = "x", secret
        code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        assert code == 235
        client.sendmail("app@shop.test", ["a@example.com"], MESSAGE)
    assert TransactionalMessage.objects.filter(delivery__email="a@example.com").count() == 1
