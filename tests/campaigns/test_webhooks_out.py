"""Outgoing webhooks against a real HTTP server: signature, payload, retries with backoff."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from campaigns.tracking import tracking_tail
from campaigns.tracking_models import Webhook, WebhookDelivery, WebhookDeliveryStatus
from campaigns.webhooks import (
    MAX_ATTEMPTS,
    SIGNATURE_HEADER,
    backoff_seconds,
    webhook_signature_valid,
    webhooks_deliver_due,
)
from delivery.models import Delivery, DeliveryEvent, EventKind
from tests.factories import CampaignFactory, audience

SECRET = "s3cret"


class Receiver:
    """A real HTTP server; answers with the scripted codes in order, then 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict, bytes]] = []
        self.script: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                code = receiver.script.pop(0) if receiver.script else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def events(db):
    campaign = CampaignFactory(lists=[audience(1)])
    contact = campaign.lists.get().contacts.get()
    delivery = Delivery.objects.create(
        campaign=campaign, contact=contact, email=contact.email, status="sent"
    )
    at = timezone.now() - timedelta(minutes=5)
    for kind in (EventKind.ATTEMPT, EventKind.SENT, EventKind.OPEN, EventKind.COMPLAINT):
        DeliveryEvent.objects.create(delivery=delivery, kind=kind, created_at=at)
    return delivery


def test_subscribed_events_are_posted_signed(receiver, events):
    Webhook.objects.create(
        name="crm", url=receiver.url, events=["sent", "complained"], secret=SECRET
    )
    Webhook.objects.create(name="off", url=receiver.url, events=["sent"], secret="x", enabled=False)
    tracking_tail()
    assert WebhookDelivery.objects.count() == 2
    assert webhooks_deliver_due() == 2
    assert [json.loads(body)["event"] for _, body in receiver.requests] == ["sent", "complained"]
    headers, body = receiver.requests[0]
    assert webhook_signature_valid(secret=SECRET, header=headers[SIGNATURE_HEADER], body=body)
    assert not webhook_signature_valid(secret="wrong", header=headers[SIGNATURE_HEADER], body=body)
    assert not webhook_signature_valid(
        secret=SECRET, header=headers[SIGNATURE_HEADER], body=body.replace(b"sent", b"sent ")
    )
    payload = json.loads(body)
    assert payload["email"] == events.email and payload["delivery_id"] == events.pk
    assert webhooks_deliver_due() == 0  # delivered once only


def test_failures_are_retried_with_exponential_backoff(receiver, events):
    Webhook.objects.create(name="crm", url=receiver.url, events=["opened"], secret=SECRET)
    tracking_tail()
    receiver.script = [500, 503]
    now = timezone.now()
    assert webhooks_deliver_due(now=now) == 0
    delivery = WebhookDelivery.objects.get()
    assert (delivery.attempts, delivery.last_status_code) == (1, 500)
    assert delivery.next_attempt_at == now + timedelta(seconds=backoff_seconds(1))
    assert webhooks_deliver_due(now=now + timedelta(seconds=1)) == 0  # not due yet
    now += timedelta(seconds=backoff_seconds(1))
    assert webhooks_deliver_due(now=now) == 0
    delivery.refresh_from_db()
    assert delivery.next_attempt_at == now + timedelta(seconds=backoff_seconds(2))
    assert backoff_seconds(2) == 2 * backoff_seconds(1)
    assert webhooks_deliver_due(now=now + timedelta(seconds=backoff_seconds(2))) == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (WebhookDeliveryStatus.DELIVERED, 3)
    assert len(receiver.requests) == 3


def test_an_unreachable_receiver_is_given_up_after_the_last_attempt(events, receiver):
    receiver.close()
    Webhook.objects.create(name="gone", url=receiver.url, events=["sent"], secret=SECRET)
    tracking_tail()
    now = timezone.now()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        webhooks_deliver_due(now=now)
        now += timedelta(seconds=backoff_seconds(attempt))
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == WebhookDeliveryStatus.FAILED
    assert delivery.attempts == MAX_ATTEMPTS
    assert delivery.last_error


def test_a_transactional_messages_events_neither_stop_the_tail_nor_count_for_a_campaign(
    receiver, events
):
    """A delivery without a campaign (the API's messages): its sent event once raised an
    IntegrityError in the campaign counters and stopped the tail, webhooks and all."""
    from django.db.models import Sum

    from campaigns.tracking_models import CampaignMinute

    def counted(field: str) -> int:
        rows = CampaignMinute.objects.filter(campaign_id=events.campaign_id)
        return rows.aggregate(n=Sum(field))["n"] or 0

    message = Delivery.objects.create(email="buyer@example.com", status="sent")
    at = timezone.now() - timedelta(minutes=4)
    DeliveryEvent.objects.create(delivery=message, kind=EventKind.SENT, created_at=at)
    Webhook.objects.create(name="crm", url=receiver.url, events=["sent"], secret=SECRET)
    tracking_tail()
    # Both sent events made their webhook (the campaign's and the message's) ...
    posted = sorted(w.payload["delivery_id"] for w in WebhookDelivery.objects.all())
    assert posted == sorted([events.pk, message.pk])
    # ... and only the campaign's counted: its minutes have its one sent message.
    assert counted("sent") == 1
    assert not CampaignMinute.objects.filter(campaign_id=None).exists()
    # The tail moved past both: a later campaign event is counted on the next run.
    DeliveryEvent.objects.create(delivery=events, kind=EventKind.BOUNCED, created_at=at)
    tracking_tail()
    assert counted("bounced") == 1
