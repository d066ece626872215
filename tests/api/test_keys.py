"""API keys: hashed storage, scopes, revocation, rate limit."""

from __future__ import annotations

import hashlib
import json

import pytest
from django.core.management import call_command
from django.db import connection

from api import services
from api.errors import ScopeError
from api.models import ApiKey, Scope, TransactionalMessage
from api.services import keys
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
    with pytest.raises(ScopeError):
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


# -- the per-process key cache -----------------------------------------------------------------


def _key_lookups(queries) -> list[str]:
    return [q["sql"] for q in queries if 'FROM "api_apikey"' in q["sql"]]


_INSERTS = 1 if connection.vendor == "postgresql" else 2


def test_a_cached_key_is_not_looked_up_again(client, api_key, django_assert_num_queries):
    _, secret = api_key
    assert post(client, "/api/v1/messages", MESSAGE, secret).status_code == 202
    # SAVEPOINT (the test's transaction), the INSERT of the delivery and its message (one
    # statement on PostgreSQL, two on SQLite), RELEASE.
    with django_assert_num_queries(_INSERTS + 2) as queries:
        assert post(client, "/api/v1/messages", MESSAGE, secret).status_code == 202
    assert not _key_lookups(queries.captured_queries)


def test_revocation_applies_to_the_next_request_with_the_key_cached(client, api_key):
    key, secret = api_key
    assert post(client, "/api/v1/messages", MESSAGE, secret).status_code == 202
    services.api_key_revoke(api_key=key)
    assert post(client, "/api/v1/messages", MESSAGE, secret).status_code == 401
    assert post(client, "/api/v1/contacts", {"email": "bob@example.com"}, secret).status_code == 401
    assert TransactionalMessage.objects.count() == 1
    assert not Contact.objects.exists()


def test_revocation_in_another_process_applies_at_once(client, api_key, redis_client):
    key, secret = api_key
    assert post(client, "/api/v1/messages", MESSAGE, secret).status_code == 202
    # What api_key_revoke in another process leaves: the row revoked, a new generation in
    # Redis; this process's cache is untouched.
    ApiKey.objects.filter(pk=key.pk).update(revoked_at="2026-01-01T00:00:00Z")
    redis_client.set("skylark:api-keys:generation", "from-another-process")
    assert post(client, "/api/v1/messages", MESSAGE, secret).status_code == 401
    assert TransactionalMessage.objects.count() == 1


def test_the_generation_moves_again_after_the_revocation_commits(
    api_key, redis_client, django_capture_on_commit_callbacks
):
    key, _ = api_key
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        services.api_key_revoke(api_key=key)
        before_commit = redis_client.get("skylark:api-keys:generation")
    assert callbacks  # a request that read the row before the commit cached a stale copy
    assert redis_client.get("skylark:api-keys:generation") not in (None, before_commit)


def test_an_admin_edit_of_scopes_applies_to_the_next_request(client, api_key):
    key, secret = api_key
    assert post(client, "/api/v1/messages", MESSAGE, secret).status_code == 202
    key.scopes = [Scope.MESSAGES_READ]
    key.save()
    assert post(client, "/api/v1/messages", MESSAGE, secret).status_code == 403


def test_without_redis_keys_are_checked_in_the_database(client, api_key, monkeypatch):
    import redis

    key, secret = api_key
    assert post(client, "/api/v1/messages", MESSAGE, secret).status_code == 202

    def down():
        raise redis.ConnectionError("down")

    monkeypatch.setattr(keys, "_redis", down)
    ApiKey.objects.filter(pk=key.pk).update(revoked_at="2026-01-01T00:00:00Z")
    assert post(client, "/api/v1/messages", MESSAGE, secret).status_code == 401


def test_a_wrong_secret_is_refused_while_the_right_one_is_cached(client, api_key):
    key, secret = api_key
    assert post(client, "/api/v1/messages", MESSAGE, secret).status_code == 202
    forged = f"sky_{key.prefix}_" + "A" * 43
    assert post(client, "/api/v1/messages", MESSAGE, forged).status_code == 401


def test_the_cache_can_be_turned_off(client, api_key, settings, django_assert_num_queries):
    settings.EDM_API_KEY_CACHE_SECONDS = 0
    _, secret = api_key
    assert post(client, "/api/v1/messages", MESSAGE, secret).status_code == 202
    with django_assert_num_queries(_INSERTS + 3) as queries:
        assert post(client, "/api/v1/messages", MESSAGE, secret).status_code == 202
    assert len(_key_lookups(queries.captured_queries)) == 1
