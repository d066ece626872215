"""Asynchronous bounces and complaints about transactional messages: correlated to the message's
delivery by the same keys as a campaign's, recorded on it (status and events through the API)
and acted on by the bounce policy.

Messages are really sent to the scripted SMTP server; the reports are built from what it
received (the return path, the ENVID, the returned headers) and go through the real intake.
"""

from __future__ import annotations

import json
import smtplib
from email import message_from_bytes

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from api import services
from api.models import Category, TransactionalMessage
from contacts.models import Contact, ContactStatus, Suppression, SuppressionReason
from delivery import tokens
from delivery.intake.ingest import bounce_ingest
from delivery.intake.models import BounceMessage, BounceMessageStatus, BouncePolicy
from delivery.models import DeliveryStatus as MessageStatus
from mailkit.verp import verp_parse
from tests.api.conftest import auth
from tests.delivery.test_intake import make_arf, make_dsn, make_sent_delivery, verp_of
from tests.factories import ContactFactory, SubscriptionFactory


@pytest.fixture
def smtp(smtp_server, settings):
    """STARTTLS and AUTH, as a provider's submission port: the pool says EHLO before MAIL,
    so the DSN parameters go out with the first message."""
    settings.EDM_SMTP_URL = smtp_server.url
    settings.EDM_SMTP_TLS_CA_FILE = smtp_server.ca_file
    return smtp_server


def send(api_key, smtp, *, to: str = "dead@example.com") -> tuple[TransactionalMessage, object]:
    """Accept and really send one message; returns it with what the SMTP server received."""
    key, _ = api_key
    request = services.SendRequest(
        to_email=to, subject="Your code", text="1234", category=Category.TRANSACTIONAL
    )
    message, _ = services.message_accept(api_key=key, request=request)
    assert services.message_send(message_id=message.pk) == MessageStatus.SENT
    received = [m for m in smtp.messages if m.rcpt_tos == (to,)][-1]
    message.refresh_from_db()
    return message, received


def returned_headers(received) -> str:
    """The headers of the message as sent, as a DSN or an ARF report returns them."""
    head = received.data.split(b"\r\n\r\n", 1)[0].decode()
    return head + "\r\n"


def api_status(client, api_key, message: TransactionalMessage) -> dict:
    _, secret = api_key
    response = client.get(f"/api/v1/messages/{message.public_id}", **auth(secret))
    assert response.status_code == 200
    return response.json()


# -- what goes out -----------------------------------------------------------------------------


def test_messages_leave_with_their_deliverys_return_path_envid_and_header(api_key, smtp):
    message, received = send(api_key, smtp)
    assert received.mail_from.startswith("bounces+")
    assert received.mail_from.endswith("@" + settings.EDM_BOUNCE_DOMAIN)
    # The same keys as a campaign delivery's: one correlation for every message.
    assert verp_parse(received.mail_from, secret=settings.SECRET_KEY) == message.delivery_id
    assert message.delivery.campaign_id is None
    # aiosmtpd upper-cases parameters, as some MTAs do: the key is read in any case.
    signed = tokens.delivery_reference(message.delivery_id)
    assert f"ENVID={signed.upper()}" in received.mail_options
    sent = message_from_bytes(received.data)
    assert sent["X-Skylark-Delivery"] == signed


def test_relayed_messages_lose_the_clients_header(api_key):
    """What is stored has no X-Skylark-Delivery: the send stamps the delivery's own (the test
    above reads it on the wire)."""
    key, _ = api_key
    data = (
        b"From: app@shop.test\r\nTo: a@example.com\r\nX-Skylark-Delivery: 42\r\n"
        b"Return-Path: <bounces@evil.example>\r\nResent-Bcc: hidden@example.org\r\n"
        b"Subject: Hi\r\n\r\nHello\r\n"
    )
    messages = services.messages_accept_raw(
        api_key=key,
        sender="app@shop.test",
        recipients=["a@example.com", "b@example.com"],
        data=data,
    )
    for message in messages:
        parsed = message_from_bytes(bytes(message.raw))
        assert parsed.get_all("X-Skylark-Delivery") is None
        assert message.delivery.email in ("a@example.com", "b@example.com")
        assert parsed["Return-Path"] is None and parsed["Resent-Bcc"] is None


# -- DSNs ---------------------------------------------------------------------------------------


def test_dsn_to_the_return_path_bounces_the_message_and_suppresses(client, api_key, smtp):
    message, received = send(api_key, smtp)
    # The report carries no other key: only the return path it was sent to.
    raw = make_dsn(recipient=message.delivery.email, to=received.mail_from)
    result = bounce_ingest(raw=raw, source="smtp", envelope_rcpts=[received.mail_from])

    assert result.status == BounceMessageStatus.APPLIED
    assert result.matched_by == "verp"
    assert result.delivery_id == message.delivery_id
    assert result.action == "suppressed"
    assert BounceMessage.objects.get().delivery_id == message.delivery_id

    status = api_status(client, api_key, message)
    assert status["status"] == "bounced"
    assert status["reason"] == "unknown_user"
    assert status["enhanced_status"] == "5.1.1"
    assert "User unknown" in status["smtp_reply"]
    assert [e["kind"] for e in status["events"]] == ["sent", "bounced"]
    assert "User unknown" in status["events"][1]["detail"]
    suppression = Suppression.objects.get(value="dead@example.com")
    assert suppression.reason == SuppressionReason.HARD_BOUNCE

    # The address is dead: the next message to it is not sent.
    key, _ = api_key
    request = services.SendRequest(to_email="dead@example.com", subject="Again", text="x")
    again, _ = services.message_accept(api_key=key, request=request)
    assert services.message_send(message_id=again.pk) == MessageStatus.SUPPRESSED
    assert len(smtp.messages) == 1


def test_envid_and_header_match_only_when_the_report_names_the_recipient(api_key, smtp):
    message, _ = send(api_key, smtp)
    key = tokens.delivery_reference(message.delivery_id)
    # A signed key in a report naming someone else: kept, acts on nobody.
    forged = make_dsn(recipient="victim@example.org", envid=key, delivery_header=key, nonce="f")
    result = bounce_ingest(raw=forged, source="pipe")
    assert result.status == BounceMessageStatus.UNTRUSTED and result.delivery_id is None
    # The unsigned key (what a forger could write, knowing only the id) acts on nobody even
    # when it names the right recipient.
    bare = str(message.delivery_id)
    forged = make_dsn(recipient=message.delivery.email, envid=bare, delivery_header=bare, nonce="g")
    result = bounce_ingest(raw=forged, source="pipe")
    assert result.status == BounceMessageStatus.UNTRUSTED and result.delivery_id is None
    message.refresh_from_db()
    assert message.delivery.status == MessageStatus.SENT and message.delivery.events.count() == 1
    assert not Suppression.objects.exists()

    by_envid = bounce_ingest(
        raw=make_dsn(recipient=message.delivery.email, envid=key.upper()), source="pipe"
    )
    assert (by_envid.matched_by, by_envid.delivery_id) == ("envid", message.delivery_id)
    message.refresh_from_db()
    assert message.delivery.status == MessageStatus.BOUNCED


def test_header_of_the_returned_message_matches(api_key, smtp):
    message, received = send(api_key, smtp)
    header = message_from_bytes(received.data)["X-Skylark-Delivery"]
    result = bounce_ingest(
        raw=make_dsn(recipient=message.delivery.email, delivery_header=header), source="imap"
    )
    assert (result.matched_by, result.delivery_id) == ("header", message.delivery_id)


def test_a_message_and_a_campaign_delivery_to_one_address_keep_apart(api_key, smtp):
    message, received = send(api_key, smtp, to="same@example.com")
    delivery = make_sent_delivery("same@example.com")
    # Each return path leads to its own delivery, whoever else was sent to the address.
    result = bounce_ingest(
        raw=make_dsn(recipient="same@example.com", to=received.mail_from), source="pipe"
    )
    assert result.delivery_id == message.delivery_id != delivery.pk
    delivery.refresh_from_db()
    assert delivery.status == "sent"
    other = bounce_ingest(
        raw=make_dsn(recipient="same@example.com", to=verp_of(delivery), nonce="2"), source="pipe"
    )
    assert other.delivery_id == delivery.pk


def test_the_return_path_outranks_a_campaign_envid_in_the_same_report(api_key, smtp):
    message, received = send(api_key, smtp, to="same@example.com")
    delivery = make_sent_delivery("same@example.com")
    raw = make_dsn(recipient="same@example.com", envid=str(delivery.pk))
    result = bounce_ingest(raw=raw, source="smtp", envelope_rcpts=[received.mail_from])
    assert (result.matched_by, result.delivery_id) == ("verp", message.delivery_id)
    delivery.refresh_from_db()
    assert delivery.status == "sent"


def test_an_unsubscribe_policy_ends_the_contacts_subscriptions(api_key, smtp):
    BouncePolicy.objects.update_or_create(
        kind="hard", defaults={"count": 1, "window_days": 0, "action": "unsubscribe"}
    )
    contact = ContactFactory(email="dead@example.com")
    subscription = SubscriptionFactory(contact=contact)
    message, received = send(api_key, smtp)
    result = bounce_ingest(
        raw=make_dsn(recipient=message.delivery.email, to=received.mail_from), source="pipe"
    )
    assert result.action == "unsubscribed"
    subscription.refresh_from_db()
    assert subscription.status == "unsubscribed"
    assert [e.kind for e in message.delivery.events.all()] == ["sent", "bounced", "unsubscribe"]
    assert not Suppression.objects.exists()


def test_soft_bounce_fails_the_message_and_is_only_counted(api_key, smtp):
    message, received = send(api_key, smtp, to="full@example.com")
    raw = make_dsn(
        recipient=message.delivery.email,
        to=received.mail_from,
        status="4.2.2",
        diagnostic="smtp; 452 4.2.2 Mailbox full",
    )
    result = bounce_ingest(raw=raw, source="pipe")
    assert result.action == "counted"
    message.refresh_from_db()
    assert message.delivery.status == MessageStatus.FAILED
    assert [e.kind for e in message.delivery.events.all()] == ["sent", "failed"]
    assert not Suppression.objects.exists()


def test_soft_bounces_of_an_address_without_contact_add_up_to_the_policy(api_key, smtp):
    BouncePolicy.objects.update_or_create(
        kind="soft", defaults={"count": 2, "window_days": 30, "action": "suppress"}
    )
    actions = []
    for nonce in ("1", "2"):
        message, received = send(api_key, smtp, to="full@example.com")
        raw = make_dsn(
            recipient=message.delivery.email,
            to=received.mail_from,
            status="4.2.2",
            diagnostic="smtp; 452 4.2.2 Mailbox full",
            nonce=nonce,
        )
        actions.append(bounce_ingest(raw=raw, source="pipe").action)
    assert actions == ["counted", "suppressed"]
    assert Suppression.objects.get(value="full@example.com").reason == "hard_bounce"
    assert not Contact.objects.exists()


def test_forged_reports_on_the_attackers_own_messages_never_count_for_another_address(
    api_key, smtp
):
    """The attacker's own return paths, with the victim's address as the bounced recipient:
    they act on the attacker's messages only, and never bring the victim (no contact)
    nearer to the policy's threshold."""
    BouncePolicy.objects.update_or_create(
        kind="soft", defaults={"count": 3, "window_days": 30, "action": "suppress"}
    )
    for nonce in ("1", "2"):
        mine, received = send(api_key, smtp, to="attacker@example.net")
        forged = make_dsn(
            recipient="victim@example.com",
            to=received.mail_from,
            status="4.2.2",
            diagnostic="smtp; 452 4.2.2 Mailbox full",
            nonce=f"forged-{nonce}",
        )
        assert bounce_ingest(raw=forged, source="smtp").action == "counted"
    victims, received = send(api_key, smtp, to="victim@example.com")
    genuine = make_dsn(
        recipient=victims.delivery.email,
        to=received.mail_from,
        status="4.2.2",
        diagnostic="smtp; 452 4.2.2 Mailbox full",
        nonce="genuine",
    )
    # One real soft bounce of three needed: counted, not suppressed.
    assert bounce_ingest(raw=genuine, source="smtp").action == "counted"
    assert not Suppression.objects.filter(value="victim@example.com").exists()


def test_delayed_dsn_only_appends_a_deferred_event(api_key, smtp):
    message, received = send(api_key, smtp)
    raw = make_dsn(
        recipient=message.delivery.email,
        to=received.mail_from,
        status="4.4.7",
        action="delayed",
        diagnostic="smtp; 451 4.4.7 still trying",
    )
    bounce_ingest(raw=raw, source="pipe")
    message.refresh_from_db()
    assert message.delivery.status == MessageStatus.SENT
    assert [e.kind for e in message.delivery.events.all()] == ["sent", "deferred"]


def test_a_report_ingested_twice_is_recorded_once(api_key, smtp):
    message, received = send(api_key, smtp)
    raw = make_dsn(recipient=message.delivery.email, to=received.mail_from)
    first = bounce_ingest(raw=raw, source="smtp")
    again = bounce_ingest(raw=raw, source="imap")
    assert again.duplicate and again.delivery_id == first.delivery_id == message.delivery_id
    assert again.action == first.action == "suppressed"
    assert message.delivery.events.filter(kind="bounced").count() == 1


def test_a_synchronous_refusal_keeps_its_status(api_key, smtp):
    smtp.script("rcpt", "550 5.7.1 policy refusal")
    key, _ = api_key
    request = services.SendRequest(to_email="a@example.com", subject="S", text="T")
    message, _ = services.message_accept(api_key=key, request=request)
    assert services.message_send(message_id=message.pk) == MessageStatus.FAILED
    bounce_ingest(
        raw=make_dsn(
            recipient="a@example.com", envid=tokens.delivery_reference(message.delivery_id)
        ),
        source="pipe",
    )
    message.refresh_from_db()
    assert message.delivery.status == MessageStatus.FAILED and message.delivery.smtp_code == 550
    assert [e.kind for e in message.delivery.events.all()] == ["failed", "bounced"]


# -- complaints ---------------------------------------------------------------------------------


def test_complaint_is_an_event_and_suppresses_the_contact(client, api_key, smtp):
    contact = ContactFactory(email="angry@example.com")
    message, received = send(api_key, smtp, to="angry@example.com")
    # A feedback loop report, sent to the FBL address with the message's headers.
    raw = make_arf(recipient="angry@example.com", to="fbl@example.com")
    raw = raw.replace(
        b"From: news@skylark.test\r\nTo: angry@example.com\r\nSubject: Spring\r\n",
        returned_headers(received).encode(),
    )
    result = bounce_ingest(raw=raw, source="imap")
    assert (result.matched_by, result.delivery_id) == ("header", message.delivery_id)
    status = api_status(client, api_key, message)
    assert status["status"] == "sent"  # it was delivered
    assert [e["kind"] for e in status["events"]] == ["sent", "complaint"]
    assert Suppression.objects.get(value="angry@example.com").reason == "complaint"
    contact.refresh_from_db()
    assert contact.status == ContactStatus.COMPLAINED


def test_the_message_admin_page_links_its_bounce_reports(client, api_key, smtp):
    message, received = send(api_key, smtp)
    result = bounce_ingest(
        raw=make_dsn(recipient=message.delivery.email, to=received.mail_from), source="pipe"
    )
    client.force_login(get_user_model().objects.create_superuser("root", "r@example.com", "pw"))
    page = client.get(f"/admin/api/transactionalmessage/{message.pk}/change/").content.decode()
    assert f"/admin/delivery/bouncemessage/{result.bounce_message_id}/change/" in page


# -- through the real intake paths ----------------------------------------------------------------


def test_a_dsn_to_the_bounce_server_bounces_the_message(bounce_server, api_key, smtp):
    message, received = send(api_key, smtp)
    raw = make_dsn(recipient=message.delivery.email, to="bounces@" + settings.EDM_BOUNCE_DOMAIN)
    with smtplib.SMTP(bounce_server.hostname, bounce_server.port, timeout=10) as client:
        client.sendmail("<>", [received.mail_from], raw)
    message.refresh_from_db()
    assert message.delivery.status == MessageStatus.BOUNCED
    assert BounceMessage.objects.get().matched_by == "verp"
    assert Suppression.objects.filter(value=message.delivery.email).exists()


def test_a_provider_webhook_with_the_header_reaches_the_message(client, api_key, smtp, settings):
    settings.EDM_WEBHOOK_TOKEN = "hook-secret"
    message, _ = send(api_key, smtp)
    event = {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "bouncedRecipients": [
                {"emailAddress": message.delivery.email, "action": "failed", "status": "5.1.1",
                 "diagnosticCode": "smtp; 550 5.1.1 user unknown"}
            ],
            "timestamp": "2016-01-27T14:59:38.237Z",
            "reportingMTA": "dsn; b267-2.smtp-out.us-west-2.amazonses.com",
        },
        "mail": {
            "messageId": "0000014644fe5ef6-9a483358-9170-4cb4-a269-f5dcdf415321-000000",
            "destination": [message.delivery.email],
            "headers": [
                {"name": "X-Skylark-Delivery", "value": tokens.delivery_reference(message.delivery_id)}
            ],
            "commonHeaders": {"messageId": message.delivery.message_id},
        },
    }  # fmt: skip
    response = client.post(
        "/hooks/ses/?token=hook-secret", json.dumps(event), content_type="application/json"
    )
    assert response.status_code == 200, response.content
    message.refresh_from_db()
    assert message.delivery.status == MessageStatus.BOUNCED
    assert BounceMessage.objects.get().delivery_id == message.delivery_id
