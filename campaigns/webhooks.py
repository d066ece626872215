"""Outgoing webhooks: events POSTed as JSON, signed with HMAC-SHA256, retried with backoff.

Each (event, webhook) pair is a WebhookDelivery row: the database is the queue, so a lost
Celery task or a restart never loses an event. ``webhooks_deliver_due`` (a periodic task)
sends what is due and reschedules failures with exponential backoff until they are given up.

Signature (like Stripe's): ``X-Skylark-Signature: t=<unix ts>,v1=<hex>`` where ``<hex>`` is
HMAC-SHA256(secret, f"{t}.{raw body}"). Receivers should reject timestamps older than a few
minutes to stop replays.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from campaigns.tracking_models import Webhook, WebhookDelivery, WebhookDeliveryStatus

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Skylark-Signature"
MAX_ATTEMPTS = 8
BASE_DELAY_SECONDS = 30  # 30 s, 1 min, 2 min, 4 min ... about 1 h before giving up
TIMEOUT_SECONDS = 10


def webhook_signature(*, secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def webhook_signature_valid(
    *, secret: str, header: str, body: bytes, tolerance_seconds: int = 300, now: float | None = None
) -> bool:
    """What a receiver does (used by the tests and documented for integrators)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((now or time.time()) - timestamp) > tolerance_seconds:
        return False
    expected = webhook_signature(secret=secret, timestamp=timestamp, body=body)
    return hmac.compare_digest(expected, f"t={timestamp},v1={parts.get('v1', '')}")


def backoff_seconds(attempts: int) -> int:
    return BASE_DELAY_SECONDS * 2 ** max(0, attempts - 1)


def webhooks_enqueue(events: Sequence[dict]) -> int:
    """One WebhookDelivery per event and subscribed, enabled webhook (call inside the writer's
    transaction so events and their webhook rows commit together)."""
    if not events:
        return 0
    hooks = [(h.pk, set(h.events)) for h in Webhook.objects.filter(enabled=True)]
    if not hooks:
        return 0
    now = timezone.now()
    rows = [
        WebhookDelivery(webhook_id=pk, event=event["event"], payload=event, next_attempt_at=now)
        for event in events
        for pk, subscribed in hooks
        if event["event"] in subscribed
    ]
    WebhookDelivery.objects.bulk_create(rows, batch_size=1000)
    return len(rows)


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
            return response.status, ""
    except urllib.error.HTTPError as exc:
        return exc.code, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return None, str(getattr(exc, "reason", exc))[:500]


def webhook_attempt(*, delivery: WebhookDelivery, now: datetime | None = None) -> bool:
    """POST one delivery once; record the outcome and the next attempt. True when delivered."""
    now = now or timezone.now()
    webhook = delivery.webhook
    body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Skylark-Webhooks/1",
        SIGNATURE_HEADER: webhook_signature(secret=webhook.secret, timestamp=timestamp, body=body),
        "X-Skylark-Event": delivery.event,
        "X-Skylark-Delivery": str(delivery.pk),
    }
    code, error = _post(webhook.url, body, headers)
    delivery.attempts += 1
    delivery.last_status_code = code
    if code is not None and 200 <= code < 300:
        delivery.status = WebhookDeliveryStatus.DELIVERED
        delivery.delivered_at = now
        delivery.last_error = ""
    else:
        delivery.last_error = error or f"HTTP {code}"
        if delivery.attempts >= MAX_ATTEMPTS:
            delivery.status = WebhookDeliveryStatus.FAILED
        else:
            delivery.next_attempt_at = now + timedelta(seconds=backoff_seconds(delivery.attempts))
    delivery.save(
        update_fields=[
            "attempts",
            "last_status_code",
            "status",
            "delivered_at",
            "last_error",
            "next_attempt_at",
        ]
    )
    return delivery.status == WebhookDeliveryStatus.DELIVERED


def webhooks_deliver_due(*, now: datetime | None = None, limit: int = 500) -> int:
    """Send every due delivery (oldest first); returns how many were delivered."""
    now = now or timezone.now()
    with transaction.atomic():
        due = list(
            WebhookDelivery.objects.select_related("webhook")
            .filter(status=WebhookDeliveryStatus.PENDING, next_attempt_at__lte=now)
            .order_by("next_attempt_at", "id")[:limit]
        )
        # Claim: push them a little into the future so a concurrent run does not send them too.
        WebhookDelivery.objects.filter(pk__in=[d.pk for d in due]).update(
            next_attempt_at=now + timedelta(seconds=TIMEOUT_SECONDS * 3)
        )
    delivered = 0
    for delivery in due:
        if not delivery.webhook.enabled:
            continue
        delivered += webhook_attempt(delivery=delivery, now=now)
    return delivered
