"""Per-key From-domain restriction: REST, the SMTP relay, the admin and create_api_key."""

from __future__ import annotations

import json
import smtplib
import ssl

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from api import relay_glue, services
from api.errors import InvalidSenderDomain
from api.models import ApiKey, Scope, TransactionalMessage
from api.relay import relay_start
from tests.api.conftest import auth


def post(client, body, secret):
    return client.post(
        "/api/v1/messages", json.dumps(body), content_type="application/json", **auth(secret)
    )


def message(from_email: str = "") -> dict:
    body = {"to": "ann@example.com", "subject": "Receipt", "text": "Thanks"}
    if from_email:
        body["from_email"] = from_email
    return body


@pytest.fixture
def restricted(db, redis_client):
    return services.api_key_create(
        application="shop",
        scopes=[Scope.MESSAGES_SEND, Scope.MESSAGES_READ],
        allowed_from_domains=["Shop.Example", "mail.shop.example"],
    )


# -- REST -------------------------------------------------------------------------------------


def test_domains_are_stored_normalized(restricted):
    key, _ = restricted
    assert key.allowed_from_domains == ["mail.shop.example", "shop.example"]
    assert services.sender_domains_normalize(["Bücher.example."]) == ["xn--bcher-kva.example"]
    with pytest.raises(InvalidSenderDomain):
        services.sender_domains_normalize(["not a domain"])


@pytest.mark.parametrize("from_email", ["orders@shop.example", "Orders@SHOP.example"])
def test_allowed_from_domain_is_accepted(client, restricted, from_email):
    _, secret = restricted
    response = post(client, message(from_email), secret)
    assert response.status_code == 202, response.content
    assert TransactionalMessage.objects.get().from_email == from_email


@pytest.mark.parametrize(
    "from_email",
    [
        "ceo@bank.example",
        "x@sub.shop.example",  # exact match: a subdomain is listed on its own
        "x@shop.example.evil.example",
        "",  # the default From (EDM_DEFAULT_FROM_EMAIL) is not in the list either
    ],
)
def test_other_from_domain_is_403_and_nothing_is_queued(client, restricted, from_email):
    _, secret = restricted
    response = post(client, message(from_email), secret)
    assert response.status_code == 403
    assert "may not send from" in response.json()["detail"]
    assert "shop.example" in response.json()["detail"]
    assert not TransactionalMessage.objects.exists()


def test_a_refused_from_is_refused_even_with_a_known_idempotency_key(client, restricted):
    _, secret = restricted
    headers = {**auth(secret), "HTTP_IDEMPOTENCY_KEY": "k1"}
    ok = client.post(
        "/api/v1/messages",
        json.dumps(message("a@shop.example")),
        content_type="application/json",
        **headers,
    )
    assert ok.status_code == 202
    other = client.post(
        "/api/v1/messages",
        json.dumps(message("a@bank.example")),
        content_type="application/json",
        **headers,
    )
    assert other.status_code == 403
    assert TransactionalMessage.objects.count() == 1


def test_a_key_without_domains_may_send_from_any(client, api_key):
    _, secret = api_key
    assert api_key[0].allowed_from_domains == []
    assert post(client, message("ceo@bank.example"), secret).status_code == 202


# -- create_api_key and the admin ---------------------------------------------------------------


def test_create_api_key_sets_the_domains(db, capsys):
    call_command(
        "create_api_key", "shop", "--from-domains", "shop.example,Mail.Shop.Example", "b.example"
    )
    key = ApiKey.objects.get()
    assert key.allowed_from_domains == ["b.example", "mail.shop.example", "shop.example"]
    assert capsys.readouterr().out.startswith(f"sky_{key.prefix}_")
    with pytest.raises(CommandError, match="not a domain"):
        call_command("create_api_key", "bad", "--from-domains", "exa mple@")
    assert ApiKey.objects.count() == 1


@pytest.fixture
def admin_client(client, db):
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client


def test_admin_creates_and_edits_the_domains(admin_client, redis_client):
    response = admin_client.post(
        "/admin/api/apikey/add/",
        {
            "application": "shop",
            "scopes": [Scope.MESSAGES_SEND],
            "allowed_from_domains": "Shop.Example\nmail.shop.example",
        },
    )
    assert response.status_code == 302, response.content
    key = ApiKey.objects.get()
    assert key.allowed_from_domains == ["mail.shop.example", "shop.example"]
    change = f"/admin/api/apikey/{key.pk}/change/"
    page = admin_client.get(change)
    assert "mail.shop.example\nshop.example" in page.content.decode()
    base = {"application": "shop", "scopes": [Scope.MESSAGES_SEND]}
    bad = admin_client.post(change, {**base, "allowed_from_domains": "no way"})
    assert bad.status_code == 200 and "not a domain name" in bad.content.decode()
    admin_client.post(change, {**base, "allowed_from_domains": "other.example"})
    key.refresh_from_db()
    assert key.allowed_from_domains == ["other.example"]
    admin_client.post(change, {**base, "allowed_from_domains": ""})
    key.refresh_from_db()
    assert key.allowed_from_domains == []
    assert key.secret_hash  # editing never touches the secret


# -- the SMTP relay --------------------------------------------------------------------------


@pytest.fixture
def relay(smtp_tls_files):
    controller = relay_start(
        authenticate=relay_glue.authenticate,
        accept=relay_glue.accept,
        host="127.0.0.1",
        port=0,
        cert_file=smtp_tls_files.cert_file,
        key_file=smtp_tls_files.key_file,
    )
    yield controller
    controller.stop()


@pytest.fixture
def relay_key(transactional_db, redis_client):
    return services.api_key_create(
        application="app", scopes=[Scope.MESSAGES_SEND], allowed_from_domains=["shop.example"]
    )


def relay_send(relay, smtp_tls_files, secret: str, from_header: str, mail_from: str):
    tls = ssl.create_default_context(cafile=smtp_tls_files.ca_file)
    body = f"From: {from_header}\r\nTo: a@example.com\r\nSubject: Hi\r\n\r\nHello\r\n".encode()
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
        client.starttls(context=tls)
        client.login("app", secret)
        client.mail(mail_from)
        client.rcpt("a@example.com")
        return client.data(body)


def test_relay_accepts_an_allowed_from(relay, relay_key, smtp_tls_files):
    _, secret = relay_key
    code, _ = relay_send(relay, smtp_tls_files, secret, "App <app@shop.example>", "x@other.test")
    assert code == 250
    assert TransactionalMessage.objects.get().from_email == "app@shop.example"


@pytest.mark.parametrize(
    ("from_header", "mail_from"),
    [
        ("App <app@bank.example>", "app@shop.example"),  # the header is what counts
        ("a@shop.example, b@bank.example", "app@shop.example"),  # every From address
    ],
)
def test_relay_refuses_another_from_domain_at_data_with_a_5xx(
    relay, relay_key, smtp_tls_files, from_header, mail_from
):
    _, secret = relay_key
    code, text = relay_send(relay, smtp_tls_files, secret, from_header, mail_from)
    assert code == 550
    assert b"5.7.1" in text and b"bank.example" in text and b"may not send from" in text
    assert not TransactionalMessage.objects.exists()
