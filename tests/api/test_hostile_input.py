"""Hostile input over HTTP (issue 14, item 10): NUL bytes, lone surrogates, offsets beyond
what PostgreSQL stores, and odd values in every field of every endpoint get a 4xx with a
JSON body, never a 500 or an HTML page."""

from __future__ import annotations

import json
from typing import Any

import pytest

from api.api import api
from campaigns.models import Campaign
from contacts.models import Contact, ContactList
from tests.api.conftest import auth

NUL = "bad\x00value"
SURROGATE = "bad\ud800value"  # json.dumps writes the escape \ud800: a lone surrogate again


def call(client, method: str, path: str, body: Any, secret: str):
    data = json.dumps(body) if body is not None else None
    return getattr(client, method)(path, data, content_type="application/json", **auth(secret))


def assert_json_error(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json")
    return response.json()


def message_body(**fields: Any) -> dict:
    return {"to": "a@example.com", "subject": "Hi", "html": "<p>Hi</p>", **fields}


def contact_body(**fields: Any) -> dict:
    return {"email": "n@example.com", "name": "N", **fields}


def campaign_body(**fields: Any) -> dict:
    return {
        "name": "C",
        "lists": ["L"],
        "subject": "S",
        "html": "<p>x</p>",
        "from_email": "news@skylark.test",
        **fields,
    }


@pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["nul", "surrogate"])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/messages", message_body(subject="{bad}")),
        ("/api/v1/messages", message_body(to_name="{bad}")),
        ("/api/v1/messages", message_body(data={"k": "{bad}"})),
        ("/api/v1/messages", message_body(headers={"X-Tag": "{bad}"})),
        ("/api/v1/messages", message_body(tags=["ok", "{bad}"])),
        (
            "/api/v1/messages",
            message_body(attachments=[{"filename": "{bad}", "content": "aGk="}]),
        ),
        ("/api/v1/contacts", contact_body(name="{bad}")),
        ("/api/v1/contacts", contact_body(attributes={"city": "{bad}"})),
        ("/api/v1/contacts", contact_body(attributes={"{bad}": "Paris"})),
        ("/api/v1/contacts", contact_body(attributes={"deep": [{"x": ["{bad}"]}]})),
        ("/api/v1/contacts", contact_body(lists=["{bad}"])),
        ("/api/v1/contacts/unsubscribe", {"email": "{bad}"}),
        ("/api/v1/campaigns", campaign_body(name="{bad}")),
        ("/api/v1/campaigns", campaign_body(subject="{bad}")),
        ("/api/v1/campaigns", campaign_body(html="{bad}")),
        ("/api/v1/campaigns", campaign_body(from_name="{bad}")),
        ("/api/v1/campaigns", campaign_body(lists=["{bad}"])),
    ],
)
def test_nul_or_lone_surrogate_in_any_field_is_a_422_naming_the_field(
    client, api_key, path, body, bad
):
    _, secret = api_key
    ContactList.objects.create(name="L")
    body = json.loads(json.dumps(body).replace("{bad}", json.dumps(bad)[1:-1]))
    detail = assert_json_error(call(client, "post", path, body, secret), 422)["detail"]
    assert "cannot be stored" in json.dumps(detail)
    assert not Contact.objects.exists()
    assert not Campaign.objects.exists()


def test_a_nul_anywhere_in_a_contact_is_refused_before_the_database(client, api_key):
    _, secret = api_key
    body = contact_body(attributes={"city": "Par\x00is"})
    detail = assert_json_error(call(client, "post", "/api/v1/contacts", body, secret), 422)
    assert "attributes.city" in json.dumps(detail)


@pytest.fixture
def draft(db):
    from tests.factories import CampaignFactory, audience

    return CampaignFactory(lists=[audience(1)])


@pytest.mark.parametrize(
    ("at", "message"),
    [
        ("2031-01-01T00:00:00+18:00", "between -15:59 and +15:59"),
        ("2031-01-01T00:00:00-16:00", "between -15:59 and +15:59"),
        ("2031-01-01T00:00:00+23:59", "between -15:59 and +15:59"),
        ("9999-12-31T23:00:00-10:00", "out of range"),
        ("0001-01-01T00:30:00+01:00", "out of range"),
        ("2031-01-01T00:00:00", "time zone"),
        ("2031-02-30T00:00:00+00:00", ""),
        ("not a date", ""),
        ("2031-01-01T00:00:00+15:60", ""),
    ],
)
def test_schedule_times_the_database_cannot_store_are_a_422(client, api_key, draft, at, message):
    _, secret = api_key
    path = f"/api/v1/campaigns/{draft.pk}/schedule"
    detail = assert_json_error(call(client, "post", path, {"at": at}, secret), 422)["detail"]
    assert message in json.dumps(detail)
    draft.refresh_from_db()
    assert draft.scheduled_at is None


def test_a_schedule_offset_within_the_limit_is_stored_as_the_same_moment(client, api_key, draft):
    _, secret = api_key
    path = f"/api/v1/campaigns/{draft.pk}/schedule"
    response = call(client, "post", path, {"at": "2031-01-01T00:00:00+15:59"}, secret)
    assert response.status_code == 200, response.content
    draft.refresh_from_db()
    assert draft.scheduled_at.isoformat() == "2030-12-31T08:01:00+00:00"


def test_errors_outside_the_api_handlers_are_json_too(client, api_key):
    _, secret = api_key
    assert_json_error(call(client, "get", "/api/v1/no-such-thing", None, secret), 404)
    assert_json_error(call(client, "get", "/api/v1/", None, secret), 404)
    response = call(client, "delete", "/api/v1/messages", None, secret)
    assert_json_error(response, 405)
    assert "POST" in response["Allow"]
    assert_json_error(client.post("/api/v1/contacts", "{not json", content_type="x/y"), 401)
    body = "{not json"
    response = client.post(
        "/api/v1/contacts", body, content_type="application/json", **auth(secret)
    )
    assert_json_error(response, 400)


def test_an_unexpected_error_is_a_json_500_not_an_html_page(client, api_key, monkeypatch):
    from api import selectors

    def broken(**kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(selectors, "message_for_key", broken)
    client.raise_request_exception = False
    _, secret = api_key
    response = call(client, "get", "/api/v1/messages/x", None, secret)
    body = assert_json_error(response, 500)
    assert "a bug" not in json.dumps(body)  # no internals in the answer


# -- a sweep over the OpenAPI schema: every operation, every field, odd values ---------------

ODD_STRINGS = [
    NUL,
    SURROGATE,
    "\x00",
    "\ud83d",  # half of an emoji
    "x" * 100_000,
    "\u202e\u0000\ufeff\uffff",
    "%00",
    "../../../etc/passwd",
    "{{ 7 * 7 }}{% for x in range(10**9) %}",
    "' OR 1=1 --",
    "",
    " ",
    "a@b",
    "\r\nBcc: victim@example.com",
]
ODD_NUMBERS = [0, -1, 2**31, 2**63, 10**30, -(10**30), 1.5]
ODD_DATETIMES = [
    "2031-01-01T00:00:00+18:00",
    "9999-12-31T23:59:59-15:59",
    "0001-01-01T00:00:00+15:59",
    "2031-01-01T00:00:00",
    "2031-13-01T00:00:00Z",
    "",
]


def _resolve(schema: dict, spec: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    if "anyOf" in schema:
        return _resolve(schema["anyOf"][0], spec)
    return schema


def _valid(schema: dict, spec: dict) -> Any:
    schema = _resolve(schema, spec)
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: _valid(sub, spec) for name, sub in props.items()}
    if kind == "array":
        return [_valid(schema.get("items", {}), spec)]
    if kind == "integer":
        return 1
    if schema.get("format") == "date-time":
        return "2031-01-01T00:00:00+00:00"
    if "enum" in schema:
        return schema["enum"][0]
    return "a@example.com" if kind == "string" else {}


def _variants(schema: dict, spec: dict, value: Any) -> list[Any]:
    """The valid value with one leaf at a time replaced by each odd value."""
    schema = _resolve(schema, spec)
    kind = schema.get("type")
    out: list[Any] = []
    if kind == "object" and schema.get("properties"):
        for name, sub in schema["properties"].items():
            for odd in _variants(sub, spec, value[name]):
                out.append({**value, name: odd})
        return out
    if kind == "array":
        return [[odd] for odd in _variants(schema.get("items", {}), spec, value[0])] + [ODD_STRINGS]
    if kind == "object" or not kind:  # free-form dicts (data, attributes, headers)
        return [{odd: odd} for odd in ODD_STRINGS] + [{"k": {"n": [odd]}} for odd in ODD_STRINGS]
    if kind == "integer":
        return [*ODD_NUMBERS, *ODD_STRINGS[:3]]
    if schema.get("format") == "date-time":
        return [*ODD_DATETIMES, *ODD_STRINGS[:3], 10**30]
    return [*ODD_STRINGS, *ODD_NUMBERS[:2], None, [], {}]


def _operations() -> list[tuple[str, str, dict]]:
    spec = api.get_openapi_schema()
    ops = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            ops.append((method, path, op))
    return ops


@pytest.mark.django_db
def test_sweep_every_operation_with_odd_values_never_answers_5xx_or_html(client, api_key, draft):
    _, secret = api_key
    ContactList.objects.create(name="L")
    spec = api.get_openapi_schema()
    requests = 0
    for method, path, op in _operations():
        paths = [path]
        for param in op.get("parameters", []):
            if param["in"] == "path":
                name = param["name"]
                real = str(draft.pk) if "campaign" in name else "x"
                paths = [
                    path.replace("{" + name + "}", value)
                    for value in [real, "%00", "%ED%A0%80", "9" * 40, "-1", "..%2F..%2F"]
                ]
        body_schema = (
            op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        )
        bodies: list[Any] = [None]
        if body_schema is not None:
            valid = _valid(body_schema, spec)
            bodies = [valid, *_variants(body_schema, spec, valid), [], "x", 10**30]
        for url in paths:
            for body in bodies:
                response = call(client, method, url, body, secret)
                requests += 1
                where = (method, url, json.dumps(body)[:200], response.status_code)
                assert response.status_code < 500, where
                assert response["Content-Type"].startswith("application/json"), where
                json.loads(response.content)
    assert requests > 300


@pytest.mark.parametrize(
    "subject",
    [b"caf\xe9 \xff\xfe", b"=?utf-8?b?AGhp?=", b"=?utf-8?q?a=00b?="],  # Latin-1 bytes, NUL words
)
def test_a_relayed_subject_the_database_would_refuse_is_stored_cleaned(api_key, subject):
    """A relayed message's header decoded by a parser (invalid bytes, NUL in an encoded word)
    is stored, never a database error for the relay's client."""
    from api import services
    from api.models import TransactionalMessage

    key, _ = api_key
    data = b"From: app@shop.test\r\nTo: a@example.com\r\nSubject: " + subject + b"\r\n\r\nHi\r\n"
    messages = services.messages_accept_raw(
        api_key=key, sender="app@shop.test", recipients=["a@example.com"], data=data
    )
    stored = TransactionalMessage.objects.get(pk=messages[0].pk)
    assert "\x00" not in stored.subject
    stored.subject.encode("utf-8")  # no lone surrogate


def test_the_openapi_schema_describes_the_422s_the_api_answers(client, api_key):
    """Schemathesis found the schema promising a string `detail` where request validation
    answers a list: a generated client would fail to read it."""
    _, secret = api_key
    answered = call(client, "post", "/api/v1/messages", {"to": 42}, secret)
    assert answered.status_code == 422 and isinstance(answered.json()["detail"], list)
    spec = client.get("/api/v1/openapi.json").json()
    schema = spec["paths"]["/api/v1/messages"]["post"]["responses"]["422"]["content"]
    ref = schema["application/json"]["schema"]["$ref"].rpartition("/")[2]
    detail = spec["components"]["schemas"][ref]["properties"]["detail"]
    assert {option.get("type") for option in detail["anyOf"]} >= {"string", "array"}
