"""Transactional sends: composition, idempotency, headers, attachments, suppression, sending."""

from __future__ import annotations

import base64
import json
from email import message_from_bytes
from email.policy import default as default_policy

import pytest

from api import services
from api.models import Category, Scope, TransactionalMessage
from api.services import messages as message_services
from campaigns.models import Template
from contacts.models import Suppression, SuppressionReason, SuppressionScope
from delivery.models import DeliveryStatus as MessageStatus
from tests.api.conftest import auth


def post(client, body, secret, **headers):
    return client.post(
        "/api/v1/messages",
        json.dumps(body),
        content_type="application/json",
        **auth(secret),
        **headers,
    )


@pytest.fixture
def template(db):
    return Template.objects.create(
        name="welcome", subject="Welcome {{ name }}", html="<p>Code {{ code }}</p>"
    )


def parsed(message: TransactionalMessage):
    return message_from_bytes(bytes(message.raw), policy=default_policy)


def test_template_by_name_renders_with_data(client, api_key, template):
    _, secret = api_key
    body = {"to": "ann@example.com", "to_name": "Ann", "template": "welcome", "data": {"code": 42}}
    response = post(client, body, secret)
    assert response.status_code == 202, response.content
    message = TransactionalMessage.objects.get(public_id=response.json()["id"])
    email = parsed(message)
    assert email["Subject"] == "Welcome Ann"
    assert "Code 42" in email.get_body(("html",)).get_content()
    assert response.json()["message_id"] == email["Message-ID"]


def test_template_by_id(client, api_key, template):
    _, secret = api_key
    response = post(client, {"to": "ann@example.com", "template": template.pk}, secret)
    assert response.status_code == 202


def test_unknown_template_or_broken_inline_content_is_422(client, api_key, db):
    _, secret = api_key
    assert post(client, {"to": "a@example.com", "template": "nope"}, secret).status_code == 422
    broken = {"to": "a@example.com", "subject": "x", "html": "{% if %}"}
    assert post(client, broken, secret).status_code == 422
    assert (
        post(client, {"to": "not an address", "subject": "x", "text": "y"}, secret).status_code
        == 422
    )
    assert not TransactionalMessage.objects.exists()


def test_same_idempotency_key_never_creates_twice_and_returns_first_answer(client, api_key):
    _, secret = api_key
    body = {"to": "a@example.com", "subject": "Receipt", "text": "Thanks"}
    first = post(client, body, secret, HTTP_IDEMPOTENCY_KEY="order-1")
    again = post(client, body, secret, HTTP_IDEMPOTENCY_KEY="order-1")
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert TransactionalMessage.objects.count() == 1
    other = post(client, body, secret, HTTP_IDEMPOTENCY_KEY="order-2")
    assert other.json()["id"] != first.json()["id"]


def test_same_idempotency_key_with_another_request_is_409(client, api_key):
    _, secret = api_key
    post(
        client,
        {"to": "a@example.com", "subject": "A", "text": "x"},
        secret,
        HTTP_IDEMPOTENCY_KEY="k",
    )
    response = post(
        client,
        {"to": "b@example.com", "subject": "A", "text": "x"},
        secret,
        HTTP_IDEMPOTENCY_KEY="k",
    )
    assert response.status_code == 409
    assert TransactionalMessage.objects.count() == 1


def test_idempotency_keys_are_per_api_key(client, api_key):
    _, secret = api_key
    _, other = services.api_key_create(application="other", scopes=[Scope.MESSAGES_SEND])
    body = {"to": "a@example.com", "subject": "A", "text": "x"}
    assert post(client, body, secret, HTTP_IDEMPOTENCY_KEY="k").status_code == 202
    assert post(client, body, other, HTTP_IDEMPOTENCY_KEY="k").status_code == 202
    assert TransactionalMessage.objects.count() == 2


@pytest.mark.parametrize(
    "name", ["From", "to", "BCC", "Sender", "Return-Path", "X-Skylark-Delivery"]
)
def test_identity_headers_cannot_be_overridden(client, api_key, name):
    _, secret = api_key
    body = {"to": "a@example.com", "subject": "A", "text": "x", "headers": {name: "evil@x.test"}}
    assert post(client, body, secret).status_code == 422
    assert not TransactionalMessage.objects.exists()


def test_extra_headers_are_sanitized_and_tags_stamped(client, api_key):
    _, secret = api_key
    body = {
        "to": "a@example.com",
        "subject": "A",
        "text": "x",
        "headers": {"X-Order": "42\r\nBcc: evil@x.test"},
        "tags": ["receipt", "shop:eu"],
    }
    response = post(client, body, secret)
    assert response.status_code == 202
    email = parsed(TransactionalMessage.objects.get())
    assert email["X-Order"] == "42 Bcc: evil@x.test"
    assert email["Bcc"] is None
    assert email["X-Skylark-Tags"] == "receipt, shop:eu"


def test_attachments_are_decoded_into_the_message(client, api_key):
    _, secret = api_key
    pdf = b"%PDF-1.4 fake"
    body = {
        "to": "a@example.com",
        "subject": "Invoice",
        "html": "<p>attached</p>",
        "attachments": [
            {"filename": "invoice.pdf", "content_type": "application/pdf",
             "content": base64.b64encode(pdf).decode()}
        ],
    }  # fmt: skip
    assert post(client, body, secret).status_code == 202
    email = parsed(TransactionalMessage.objects.get())
    [part] = list(email.iter_attachments())
    assert part.get_filename() == "invoice.pdf" and part.get_content() == pdf
    body["attachments"][0]["content"] = "not base64!"
    assert post(client, body, secret).status_code == 422


def test_status_and_events_are_readable_by_the_same_application_only(client, api_key):
    _, secret = api_key
    response = post(client, {"to": "a@example.com", "subject": "A", "text": "x"}, secret)
    message_id = response.json()["id"]
    status = client.get(f"/api/v1/messages/{message_id}", **auth(secret))
    assert status.status_code == 200
    assert status.json()["status"] == "pending"
    _, stranger = services.api_key_create(application="other", scopes=[Scope.MESSAGES_READ])
    assert client.get(f"/api/v1/messages/{message_id}", **auth(stranger)).status_code == 404


# -- sending (the task body, called directly) -----------------------------------------------


@pytest.fixture
def smtp(smtp_server_factory, settings):
    server = smtp_server_factory(starttls=False)
    settings.EDM_SMTP_URL = server.url
    return server


def accept(api_key, to="a@example.com", category=Category.TRANSACTIONAL):
    key, _ = api_key
    request = services.SendRequest(to_email=to, subject="S", text="T", category=category)
    message, _ = services.message_accept(api_key=key, request=request)
    return message


def test_message_send_delivers_with_the_envelope_recipient(api_key, smtp):
    message = accept(api_key)
    assert services.message_send(message_id=message.pk) == MessageStatus.SENT
    [received] = smtp.wait_for_messages(1)
    assert received.rcpt_tos == ("a@example.com",)
    message.refresh_from_db()
    delivery = message.delivery
    assert delivery.status == "sent" and delivery.attempts == 1 and delivery.sent_at
    assert delivery.campaign is None and delivery.email == "a@example.com"
    assert [e.kind for e in delivery.events.all()] == ["sent"]
    # A second run (a duplicate task) finds nothing to claim and sends nothing.
    assert services.message_send(message_id=message.pk) == ""
    assert len(smtp.messages) == 1


def test_temporary_failure_defers_with_the_retry_policy(api_key, smtp):
    smtp.script("rcpt", "451 4.7.1 try later", times=1)
    message = accept(api_key)
    assert services.message_send(message_id=message.pk) == MessageStatus.DEFERRED
    message.refresh_from_db()
    assert message.delivery.next_attempt_at is not None and message.delivery.smtp_code == 451


def test_hard_bounce_suppresses_the_address(api_key, smtp):
    smtp.script("rcpt", "550 5.1.1 user unknown")
    message = accept(api_key)
    assert services.message_send(message_id=message.pk) == MessageStatus.BOUNCED
    assert Suppression.objects.filter(value="a@example.com", reason="hard_bounce").exists()


@pytest.mark.parametrize(
    ("reason", "category", "expected"),
    [
        (SuppressionReason.HARD_BOUNCE, Category.TRANSACTIONAL, "suppressed"),
        (SuppressionReason.COMPLAINT, Category.TRANSACTIONAL, "suppressed"),
        (SuppressionReason.UNSUBSCRIBE, Category.TRANSACTIONAL, "sent"),
        (SuppressionReason.UNSUBSCRIBE, Category.MARKETING, "suppressed"),
    ],
)
def test_suppression_rules_by_category(api_key, smtp, reason, category, expected):
    Suppression.objects.create(value="a@example.com", scope=SuppressionScope.ADDRESS, reason=reason)
    message = accept(api_key, category=category)
    assert services.message_send(message_id=message.pk) == expected
    assert len(smtp.messages) == (1 if expected == "sent" else 0)


def test_an_accepted_message_is_published_on_the_priority_queue_after_its_commit(
    client, api_key, redis_client, settings, django_capture_on_commit_callbacks
):
    _, secret = api_key
    queue = settings.EDM_PRIORITY_QUEUE
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = post(client, {"to": "a@example.org", "subject": "S", "text": "T"}, secret)
    assert response.status_code == 202
    assert redis_client.llen(queue) == 0  # nothing before the row is committed
    for callback in callbacks:
        callback()
    assert redis_client.llen(queue) == 1
    task = json.loads(redis_client.lindex(queue, 0))
    message = TransactionalMessage.objects.get(public_id=response.json()["id"])
    assert task["headers"]["task"] == "api.send_message"
    assert json.loads(base64.b64decode(task["body"]))[0] == [message.pk]
    # A second message goes through the same producer and its reused Redis client.
    with django_capture_on_commit_callbacks(execute=True):
        post(client, {"to": "b@example.org", "subject": "S", "text": "T"}, secret)
    assert redis_client.llen(queue) == 2


def test_with_eager_tasks_no_broker_connection_is_made(
    client, api_key, celery_eager, monkeypatch, django_capture_on_commit_callbacks
):
    _, secret = api_key
    sent = []
    monkeypatch.setattr(services, "message_send", lambda *, message_id: sent.append(message_id))

    def no_broker():
        raise AssertionError("connected to the broker")

    monkeypatch.setattr(message_services, "_task_producer", no_broker)
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, {"to": "a@example.org", "subject": "S", "text": "T"}, secret)
    assert response.status_code == 202
    assert sent == [TransactionalMessage.objects.get(public_id=response.json()["id"]).pk]
