"""Hostile bounce reports and provider webhooks (issue 14, item 6): NUL bytes and invalid
UTF-8 in diagnostics, headers and JSON are stored cleaned; the report is never lost."""

from __future__ import annotations

import json
import smtplib

import pytest

from delivery.intake.models import BounceMessage, BounceOutcome
from delivery.models import DeliveryStatus
from tests.delivery.test_intake import make_dsn, make_sent_delivery, verp_of
from tests.delivery.test_webhooks import TOKEN, _post, _ses_bounce, _sns
from tests.delivery.test_webhooks import webhook_settings as webhook_settings  # autouse


def _storable(*values: str) -> bool:
    return not any("\x00" in v or any("\ud800" <= c <= "\udfff" for c in v) for v in values)


def test_a_dsn_with_nul_and_invalid_utf8_over_smtp_is_stored_and_applied(bounce_server):
    delivery = make_sent_delivery()
    verp = verp_of(delivery)
    raw = make_dsn(
        recipient=delivery.email,
        to=verp,
        diagnostic="smtp; 550 5.1.1 <{rcpt}>: user \x00 unknown QQQ",
    ).replace(b"QQQ", b"\xff\xfe\x00\xed\xa0\x80")
    assert b"\x00" in raw and b"\xff" in raw
    with smtplib.SMTP(bounce_server.hostname, bounce_server.port, timeout=10) as client:
        client.ehlo("mx.example.com")
        assert client.sendmail("<>", [verp], raw) == {}

    message = BounceMessage.objects.get()
    assert bytes(message.raw) == raw  # the evidence is kept as it came
    outcome = BounceOutcome.objects.get()
    assert "user \ufffd unknown" in outcome.diagnostic
    assert _storable(outcome.diagnostic, outcome.recipient, json.dumps(message.summary))
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.BOUNCED


@pytest.mark.django_db
def test_a_webhook_with_nul_and_lone_surrogates_in_its_json_is_stored(client):
    delivery = make_sent_delivery()
    notification = _ses_bounce(delivery)
    notification["bounce"]["bouncedRecipients"][0]["diagnosticCode"] = "smtp; 550 \x00 \ud800 no"
    notification["bounce"]["reportingMTA"] = "dsn; mx\x00.example.com"
    # SNS wraps the notification in a JSON string: the escapes are decoded a second time.
    response = _post(client, f"/hooks/ses/?token={TOKEN}", _sns(notification))
    assert response.status_code == 200, response.content
    outcome = BounceOutcome.objects.get()
    assert outcome.diagnostic == "550 \ufffd \ufffd no"
    assert _storable(outcome.reporting_mta, json.dumps(BounceMessage.objects.get().summary))
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.BOUNCED
