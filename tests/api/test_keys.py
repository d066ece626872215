"""API keys: hashed storage, scopes, revocation, rate limit."""

from __future__ import annotations

import hashlib
import json

import pytest
from django.core.management import call_command

from api import services
from api.models import ApiKey, Scope, TransactionalMessage
from contacts.models import Contact
from tests.api.conftest import auth

MESSAGE = {"to": "alice@example.com", "subject": "Hi {{ name }}", "html": "<p>Hello</p>"}


def post(client, path, body, secret=None, **headers):
    if secret is not None:
        headers.update(auth(secret))
    return client.post(path, json.dumps(body), content_type="application/json", **headers)


def test_key_is_stored_as_sha256_with_a_visible_prefix(api_key):
    key, secret = api_key
    assert secret.startswith(f"sky_{key.prefix}_")
    assert key.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in json.dumps(list(ApiKey.objects.values()), default=str)


def test_valid_key_sends_and_gets_202(client, api_key):
    _, secret = api_key
    response = post(client, "/api/v1/messages", MESSAGE, secret)
    assert response.status_code == 202, response.content
    assert TransactionalMessage.objects.filter(public_id=response.json()["id"]).exists()


def test_x_api_key_header_works_too(client, api_key):
    _, secret = api_key
    response = post(client, "/api/v1/messages", MESSAGE, HTTP_X_API_KEY=secret)
    assert response.status_code == 202


@pytest.mark.parametrize("secret", [None, "sky_abcdefgh_" + "x" * 43, "garbage"])
def test_missing_or_wrong_key_gets_401_and_changes_nothing(client, api_key, secret):
    response = post(client, "/api/v1/messages", MESSAGE, secret)
    assert response.status_code == 401
    response = post(client, "/api/v1/contacts", {"email": "bob@example.com"}, secret)
    assert response.status_code == 401
    assert not TransactionalMessage.objects.exists()
    assert not Contact.objects.exists()


def test_right_prefix_wrong_secret_gets_401(client, api_key):
    key, secret = api_key
    forged = f"sky_{key.prefix}_" + "A" * 43
    assert post(client, "/api/v1/messages", MESSAGE, forged).status_code == 401
    assert not TransactionalMessage.objects.exists()


def test_revoked_key_gets_401_and_changes_nothing(client, api_key):
    key, secret = api_key
    services.api_key_revoke(api_key=key)
    assert post(client, "/api/v1/messages", MESSAGE, secret).status_code == 401
    assert post(client, "/api/v1/contacts", {"email": "bob@example.com"}, secret).status_code == 401
    assert not TransactionalMessage.objects.exists()
    assert not Contact.objects.exists()


def test_missing_scope_gets_403(client, redis_client, db):
    _, secret = services.api_key_create(application="reader", scopes=[Scope.MESSAGES_READ])
    assert post(client, "/api/v1/messages", MESSAGE, secret).status_code == 403
    assert post(client, "/api/v1/contacts", {"email": "b@example.com"}, secret).status_code == 403
    assert not TransactionalMessage.objects.exists()
    assert not Contact.objects.exists()


def test_unknown_scope_is_refused(db):
    with pytest.raises(services.ScopeError):
        services.api_key_create(application="x", scopes=["messages:delete"])


def test_rate_limit_per_key_answers_429_with_retry_after(client, redis_client, db):
    _, secret = services.api_key_create(
        application="tiny", scopes=[Scope.MESSAGES_SEND], rate_limit_per_minute=3
    )
    codes = [post(client, "/api/v1/messages", MESSAGE, secret).status_code for _ in range(5)]
    assert codes[:3] == [202, 202, 202]
    assert codes[3:] == [429, 429]
    response = post(client, "/api/v1/messages", MESSAGE, secret)
    assert 1 <= int(response["Retry-After"]) <= 60
    assert TransactionalMessage.objects.count() == 3


def test_create_api_key_command_prints_the_secret_once(db, capsys):
    call_command("create_api_key", "billing", "--scopes", "messages:send", "contacts:write")
    secret = capsys.readouterr().out.strip()
    key = services.api_key_authenticate(secret)
    assert key is not None and key.application == "billing"
    assert key.scopes == ["contacts:write", "messages:send"]


def test_openapi_schema_and_docs_are_served(client, db):
    schema = client.get("/api/v1/openapi.json")
    assert schema.status_code == 200
    assert "/api/v1/messages" in schema.json()["paths"]
    assert client.get("/api/v1/docs").status_code == 200
