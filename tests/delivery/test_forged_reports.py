"""Forged bounce and complaint reports, sent to the real bounce server by a real SMTP client.

The attack (issue 14.1): delivery ids are small sequential numbers, visible in every message;
a report naming one in `Original-Envelope-Id` or `X-Skylark-Delivery` used to suppress that
recipient, even when it named no recipient at all. Only an unforgeable reference may change a
recipient's state now; everything else is stored, shown and acts on nobody.
"""

from __future__ import annotations

import smtplib
from email import message_from_bytes

import pytest
from django.conf import settings

from contacts.models import Contact, ContactStatus, Suppression
from delivery import tokens
from delivery.intake.models import BounceMessage, BounceMessageStatus
from delivery.models import DeliveryStatus, EventKind
from mailkit.compose import make_message_id
from tests.delivery.test_intake import make_dsn, make_sent_delivery

pytestmark = pytest.mark.django_db(transaction=True)


def _send(server, raw: bytes, *, to: str = "") -> None:
    """What an attacker does: connect to the bounce server and hand it a report."""
    rcpt = to or f"bounces@{settings.EDM_BOUNCE_DOMAIN}"
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
        client.ehlo("mx.attacker.example")
        assert client.sendmail("<>", [rcpt], raw) == {}


def make_dsn_without_recipient(*, envid: str = "", delivery_header: str = "", nonce: str) -> bytes:
    """A DSN whose per-recipient part names nobody: only the key of the message."""
    envid_line = f"Original-Envelope-Id: {envid}\r\n" if envid else ""
    original = "From: news@skylark.test\r\nSubject: Spring\r\n"
    if delivery_header:
        original += f"X-Skylark-Delivery: {delivery_header}\r\n"
    return (
        "From: MAILER-DAEMON@mx.attacker.example\r\n"
        f"To: bounces@{settings.EDM_BOUNCE_DOMAIN}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <forged-{nonce}@mx.attacker.example>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.attacker.example\r\n{envid_line}\r\n"
        "Action: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n\r\n"
        f"--B\r\nContent-Type: text/rfc822-headers\r\n\r\n{original}\r\n--B--\r\n"
    ).encode()


def make_arf(*, original_headers: str, recipient: str = "", nonce: str = "1") -> bytes:
    """An RFC 5965 abuse report quoting the headers of the message complained about."""
    rcpt_line = f"Original-Rcpt-To: {recipient}\r\n" if recipient else ""
    return (
        "From: staff@fbl.example\r\n"
        f"To: fbl@{settings.EDM_BOUNCE_DOMAIN}\r\n"
        f"Subject: complaint {nonce}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="ARF"\r\n\r\n'
        "--ARF\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\r\n"
        "--ARF\r\nContent-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: abuse\r\nUser-Agent: FBL/1.0\r\nVersion: 1\r\n{rcpt_line}\r\n"
        f"--ARF\r\nContent-Type: text/rfc822-headers\r\n\r\n{original_headers}\r\n--ARF--\r\n"
    ).encode()


def _untouched(delivery) -> None:
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT
    assert not delivery.events.filter(
        kind__in=[EventKind.BOUNCED, EventKind.COMPLAINT, EventKind.FAILED]
    ).exists()
    assert not Suppression.objects.filter(value=delivery.email).exists()
    assert Contact.objects.get(pk=delivery.contact_id).status == ContactStatus.ACTIVE


def test_five_forged_dsns_knowing_only_the_delivery_id_suppress_nobody(bounce_server):
    delivery = make_sent_delivery("victim@example.com")
    bare = str(delivery.pk)
    forged = [
        make_dsn_without_recipient(envid=bare, nonce="1"),
        make_dsn_without_recipient(delivery_header=bare, nonce="2"),
        make_dsn_without_recipient(envid=bare, delivery_header=bare, nonce="3"),
        # Knowing the address too does not help: the id is not signed.
        make_dsn(recipient=delivery.email, envid=bare, nonce="4"),
        make_dsn(recipient=delivery.email, delivery_header=bare, nonce="5"),
    ]
    for raw in forged:
        _send(bounce_server, raw)

    assert BounceMessage.objects.count() == 5  # every report is kept
    assert set(BounceMessage.objects.values_list("status", flat=True)) == {
        BounceMessageStatus.UNTRUSTED
    }
    assert not BounceMessage.objects.filter(delivery__isnull=False).exists()
    _untouched(delivery)


def test_a_forged_or_borrowed_tag_suppresses_nobody(bounce_server):
    delivery = make_sent_delivery("victim@example.com")
    other = make_sent_delivery("attacker@example.com")
    signed = tokens.delivery_reference(delivery.pk)
    altered = signed[:-1] + ("a" if signed[-1] != "a" else "b")
    # The attacker's own signed reference, with the victim's id put in front of its tag.
    borrowed = f"{delivery.pk}.{tokens.delivery_reference(other.pk).rpartition('.')[2]}"
    for nonce, key in (("altered", altered), ("borrowed", borrowed)):
        _send(bounce_server, make_dsn(recipient=delivery.email, envid=key, nonce=nonce))
        _send(
            bounce_server,
            make_dsn(recipient=delivery.email, delivery_header=key, nonce=nonce + "h"),
        )
    assert set(BounceMessage.objects.values_list("status", flat=True)) == {"untrusted"}
    _untouched(delivery)


def test_a_signed_reference_in_a_report_naming_nobody_or_someone_else_acts_on_nobody(
    bounce_server,
):
    delivery = make_sent_delivery("victim@example.com")
    signed = tokens.delivery_reference(delivery.pk)
    _send(bounce_server, make_dsn_without_recipient(envid=signed, nonce="none"))
    _send(bounce_server, make_dsn(recipient="other@example.org", envid=signed, nonce="other"))
    _untouched(delivery)
    reports = BounceMessage.objects.order_by("pk")
    assert [r.status for r in reports] == ["untrusted", "untrusted"]
    # Shown to the operator: which message it named, and why it acted on nobody.
    assert [r.summary["untrusted"]["delivery"] for r in reports] == [delivery.pk] * 2
    assert reports[1].summary["untrusted"]["why"] == "names another recipient than the message's"
    assert reports[0].summary["untrusted"]["why"]


def test_a_signed_reference_naming_the_recipient_bounces(bounce_server):
    delivery = make_sent_delivery("dead@example.com")
    _send(
        bounce_server,
        make_dsn(recipient=delivery.email, envid=tokens.delivery_reference(delivery.pk)),
    )
    message = BounceMessage.objects.get()
    assert (message.status, message.matched_by) == ("applied", "envid")
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.BOUNCED


def test_a_forged_complaint_with_a_bare_id_marks_nobody_complained(bounce_server):
    delivery = make_sent_delivery("victim@example.com")
    guessable = f"<{delivery.pk}.5f0c2a1b3d4e.0123456789ab@skylark.test>"  # the old format
    _send(
        bounce_server,
        make_arf(
            original_headers=(
                f"X-Skylark-Delivery: {delivery.pk}\r\nMessage-ID: {guessable}\r\n"
                f"To: {delivery.email}\r\n"
            ),
            recipient=delivery.email,
        ),
    )
    message = BounceMessage.objects.get()
    assert message.kind == "complaint" and message.status == "untrusted"
    _untouched(delivery)


def test_a_complaint_quoting_our_message_id_or_header_applies(bounce_server):
    by_id = make_sent_delivery("angry@example.com")
    by_header = make_sent_delivery("cross@example.com")
    # Complaint loops often redact the recipient: the signed key is enough.
    _send(
        bounce_server, make_arf(original_headers=f"Message-ID: {by_id.message_id}\r\n", nonce="1")
    )
    header = f"X-Skylark-Delivery: {tokens.delivery_reference(by_header.pk)}\r\n"
    _send(bounce_server, make_arf(original_headers=header, nonce="2"))
    for delivery, matched_by in ((by_id, "message_id"), (by_header, "header")):
        assert BounceMessage.objects.get(delivery=delivery).matched_by == matched_by
        assert delivery.events.filter(kind=EventKind.COMPLAINT).count() == 1
        assert Contact.objects.get(pk=delivery.contact_id).status == ContactStatus.COMPLAINED


def test_message_ids_are_unguessable_and_verifiable():
    from mailkit.compose import message_id_delivery

    secret = tokens.message_id_secret()
    ids = [make_message_id(domain="skylark.test", delivery_id=7, secret=secret) for _ in range(3)]
    assert all(message_id_delivery(value, secret=secret) == 7 for value in ids)
    left, _, domain = ids[0][1:-1].partition("@")
    head, _, tag = left.rpartition(".")
    assert len(tag) == 16
    # Another delivery's id with this tag, or the tag altered: not ours.
    assert message_id_delivery(f"<8{head[1:]}.{tag}@{domain}>", secret=secret) is None
    altered = tag[:-1] + ("a" if tag[-1] != "a" else "b")
    assert message_id_delivery(f"<{head}.{altered}@{domain}>", secret=secret) is None
    assert message_id_delivery(ids[0], secret="another secret") is None


# --- the real send path: what a message carries is what a report must quote --------------------


@pytest.fixture
def sent_campaign(settings, smtp_server, monkeypatch):
    """One campaign sent through the real send path to the scripted SMTP server."""
    from campaigns import tasks
    from campaigns.sending.batch import campaign_send_batch
    from campaigns.sending.dispatch import campaign_dispatch
    from campaigns.services import campaign_send
    from tests.factories import CampaignFactory, audience

    settings.EDM_SMTP_URL = smtp_server.url
    settings.EDM_SMTP_TLS_CA_FILE = smtp_server.ca_file
    monkeypatch.setattr(tasks.campaign_dispatch, "delay_on_commit", lambda *a: None)
    monkeypatch.setattr(tasks.campaign_send_batch, "delay", lambda *a: None)
    campaign = CampaignFactory(
        lists=[audience(2)], html='<p>Hi {{ name }}</p><a href="{{ unsubscribe_url }}">Stop</a>'
    )
    campaign_send(campaign_id=campaign.pk)
    campaign_dispatch(campaign_id=campaign.pk)
    campaign_send_batch(campaign_id=campaign.pk)
    return campaign, smtp_server.wait_for_messages(2)


def _delivery_of(campaign, wire):
    return campaign.deliveries.get(email=wire.rcpt_tos[0])


def test_sent_messages_carry_signed_references_that_reports_can_quote(sent_campaign, bounce_server):
    campaign, wires = sent_campaign
    wire = wires[0]
    delivery = _delivery_of(campaign, wire)
    parsed = message_from_bytes(wire.data)
    header = parsed["X-Skylark-Delivery"]
    envid = next(o for o in wire.mail_options if o.upper().startswith("ENVID=")).split("=", 1)[1]
    assert tokens.delivery_from_reference(header) == delivery.pk
    assert tokens.delivery_from_reference(envid) == delivery.pk
    assert header.partition(".")[0] == str(delivery.pk)  # still readable by an operator
    delivery.refresh_from_db()
    assert delivery.message_id == parsed["Message-ID"]

    # A remote MTA's DSN quoting the ENVID it was given (no VERP): applied.
    _send(bounce_server, make_dsn(recipient=delivery.email, envid=envid, nonce="dsn"))
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.BOUNCED

    # A complaint quoting the other message's headers as received: applied.
    other = _delivery_of(campaign, wires[1])
    quoted = message_from_bytes(wires[1].data)
    original = "".join(f"{k}: {quoted[k]}\r\n" for k in ("Message-ID", "X-Skylark-Delivery"))
    _send(bounce_server, make_arf(original_headers=original, nonce="arf"))
    assert other.events.filter(kind=EventKind.COMPLAINT).count() == 1
