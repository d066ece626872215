"""bounce_ingest: correlation keys, the policy table, idempotency, unmatched and ignored reports.

The helpers at the top (`make_sent_delivery`, `make_dsn`, ...) are shared by the other intake
tests (bounce server, pipe, poller).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from campaigns.models import Campaign
from contacts.models import (
    Contact,
    ContactStatus,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
)
from delivery import tokens
from delivery.intake.ingest import bounce_ingest, bounce_policy_for
from delivery.intake.models import (
    BounceMessage,
    BounceMessageStatus,
    BounceOutcome,
    BouncePolicy,
)
from delivery.models import Delivery, DeliveryStatus, EventKind
from delivery.selectors import bounce_rates_by_campaign, bounce_rates_by_domain
from mailkit.compose import make_message_id
from mailkit.verp import verp_address
from tests.factories import ContactFactory, SubscriptionFactory

# --- helpers shared with the other intake tests -----------------------------------------------


def make_sent_delivery(email: str = "dead@example.com", *, campaign: Campaign | None = None):
    """A contact on a list, a campaign and a delivery accepted by the remote server (250)."""
    contact = Contact.objects.filter(email=email).first() or ContactFactory(email=email)
    subscription = SubscriptionFactory(contact=contact)
    if campaign is None:
        campaign = Campaign.objects.create(
            name="Spring", subject="Hi", html="<p>Hi</p>", from_email="news@skylark.test"
        )
    campaign.lists.add(subscription.contact_list)
    delivery = Delivery.objects.create(
        campaign=campaign,
        contact=contact,
        email=email,
        status=DeliveryStatus.SENT,
        attempts=1,
        smtp_code=250,
        sent_at=timezone.now(),
    )
    delivery.message_id = make_message_id(
        domain="skylark.test", delivery_id=delivery.pk, secret=tokens.message_id_secret()
    )
    delivery.save(update_fields=["message_id"])
    return delivery


def verp_of(delivery: Delivery) -> str:
    return verp_address(
        delivery_id=delivery.pk, domain=settings.EDM_BOUNCE_DOMAIN, secret=settings.SECRET_KEY
    )


def make_dsn(
    *,
    recipient: str,
    to: str = "",
    status: str = "5.1.1",
    action: str = "failed",
    diagnostic: str = "smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
    envid: str = "",
    delivery_header: str = "",
    message_id: str = "",
    nonce: str = "1",
) -> bytes:
    """An RFC 3464 DSN as Postfix writes it, returning the original's headers."""
    envid_line = f"Original-Envelope-Id: {envid}\r\n" if envid else ""
    original = f"From: news@skylark.test\r\nTo: {recipient}\r\nSubject: Spring\r\n"
    if message_id:
        original += f"Message-ID: {message_id}\r\n"
    if delivery_header:
        original += f"X-Skylark-Delivery: {delivery_header}\r\n"
    text = (
        f"From: MAILER-DAEMON@mx.example.com (Mail Delivery System)\r\n"
        f"To: {to or 'bounces@' + settings.EDM_BOUNCE_DOMAIN}\r\n"
        f"Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <dsn-{nonce}@mx.example.com>\r\n"
        f"Auto-Submitted: auto-replied\r\n"
        f"MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="BOUND"\r\n'
        f"\r\n"
        f"--BOUND\r\n"
        f"Content-Type: text/plain\r\n\r\n"
        f"I'm sorry to have to inform you that your message could not be delivered.\r\n\r\n"
        f"--BOUND\r\n"
        f"Content-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.example.com\r\n"
        f"{envid_line}"
        f"\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: {diagnostic.format(rcpt=recipient)}\r\n"
        f"\r\n"
        f"--BOUND\r\n"
        f"Content-Type: text/rfc822-headers\r\n\r\n"
        f"{original}"
        f"\r\n"
        f"--BOUND--\r\n"
    )
    return text.encode()


def make_auto_reply(*, to: str) -> bytes:
    return (
        "From: someone@example.com\r\n"
        f"To: {to}\r\n"
        "Subject: Out of office: Spring\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "Message-ID: <ooo-1@example.com>\r\n"
        "\r\n"
        "I am away until Monday and will read your message when I am back.\r\n"
    ).encode()


def make_arf(*, recipient: str, to: str, message_id: str = "") -> bytes:
    original = f"From: news@skylark.test\r\nTo: {recipient}\r\nSubject: Spring\r\n"
    if message_id:
        original += f"Message-ID: {message_id}\r\n"
    return (
        "From: staff@hotmail.com\r\n"
        f"To: {to}\r\n"
        "Subject: complaint about message from 192.0.2.1\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="ARF"\r\n'
        "\r\n"
        "--ARF\r\n"
        "Content-Type: text/plain\r\n\r\n"
        "This is an email abuse report.\r\n\r\n"
        "--ARF\r\n"
        "Content-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\n"
        "User-Agent: SomeGenerator/1.0\r\n"
        "Version: 1\r\n"
        f"Original-Rcpt-To: {recipient}\r\n"
        "\r\n"
        "--ARF\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\n"
        f"{original}"
        "\r\n"
        "--ARF--\r\n"
    ).encode()


# --- correlation -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_hard_bounce_to_the_verp_address_bounces_and_suppresses():
    delivery = make_sent_delivery()
    result = bounce_ingest(
        raw=make_dsn(recipient=delivery.email, to=verp_of(delivery)), source="pipe"
    )

    assert result.status == BounceMessageStatus.APPLIED
    assert result.matched_by == "verp"
    assert result.delivery_id == delivery.pk
    assert result.action == "suppressed"
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.BOUNCED
    assert delivery.reason == "unknown_user"
    assert delivery.enhanced_status == "5.1.1"
    event = delivery.events.get(kind=EventKind.BOUNCED)
    assert "User unknown" in event.detail
    assert event.data["reason"] == "unknown_user"
    assert event.data["reporting_mta"]
    assert Suppression.objects.get(value="dead@example.com").reason == SuppressionReason.HARD_BOUNCE
    assert Contact.objects.get(email="dead@example.com").status == ContactStatus.BOUNCED


@pytest.mark.django_db
def test_the_smtp_envelope_recipient_is_tried_first():
    delivery = make_sent_delivery()
    other = make_sent_delivery("other@example.com")
    raw = make_dsn(recipient=delivery.email, to=verp_of(other))
    result = bounce_ingest(raw=raw, source="smtp", envelope_rcpts=[verp_of(delivery)])
    assert result.delivery_id == delivery.pk
    assert result.matched_by == "verp"


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["envid", "header", "message_id"])
def test_reports_without_verp_match_by_signed_envid_header_or_message_id(key):
    delivery = make_sent_delivery()
    keys = {
        "envid": {"envid": tokens.delivery_reference(delivery.pk)},
        "header": {"delivery_header": tokens.delivery_reference(delivery.pk)},
        "message_id": {"message_id": delivery.message_id},
    }[key]
    result = bounce_ingest(raw=make_dsn(recipient=delivery.email, **keys), source="pipe")
    assert result.delivery_id == delivery.pk
    assert result.matched_by == key
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.BOUNCED


@pytest.mark.django_db
def test_a_signed_envid_naming_another_recipient_acts_on_nobody():
    delivery = make_sent_delivery()
    raw = make_dsn(
        recipient="someone-else@example.com", envid=tokens.delivery_reference(delivery.pk)
    )
    result = bounce_ingest(raw=raw, source="pipe")
    assert result.status == BounceMessageStatus.UNTRUSTED
    assert result.delivery_id is None
    summary = BounceMessage.objects.get(pk=result.bounce_message_id).summary
    assert summary["untrusted"]["delivery"] == delivery.pk  # shown, not acted on
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT
    assert not Suppression.objects.exists()


@pytest.mark.django_db
def test_an_unmatched_report_is_kept():
    raw = make_dsn(recipient="stranger@example.net", to="postmaster@" + settings.EDM_BOUNCE_DOMAIN)
    result = bounce_ingest(raw=raw, source="pipe")
    assert result.status == BounceMessageStatus.UNMATCHED
    message = BounceMessage.objects.get(pk=result.bounce_message_id)
    assert bytes(message.raw) == raw
    assert message.size == len(raw)
    assert message.summary["recipients"][0]["recipient"] == "stranger@example.net"
    outcome = message.outcomes.get()
    assert outcome.delivery_id is None and not outcome.counted
    assert not Suppression.objects.exists()


@pytest.mark.django_db
def test_a_tampered_verp_address_matches_nothing():
    delivery = make_sent_delivery()
    forged = verp_of(delivery).replace("bounces+", "bounces+a")
    result = bounce_ingest(raw=make_dsn(recipient="x@example.org", to=forged), source="pipe")
    assert result.status == BounceMessageStatus.UNMATCHED


# --- idempotency, auto-replies, errors ------------------------------------------------------


@pytest.mark.django_db
def test_the_same_report_twice_is_stored_and_counted_once():
    BouncePolicy.objects.update_or_create(kind="hard", defaults={"count": 2, "action": "suppress"})
    delivery = make_sent_delivery()
    raw = make_dsn(recipient=delivery.email, to=verp_of(delivery))
    first = bounce_ingest(raw=raw, source="imap")
    second = bounce_ingest(raw=raw, source="pop3")
    assert not first.duplicate and second.duplicate
    assert second.bounce_message_id == first.bounce_message_id
    assert BounceMessage.objects.count() == 1
    assert BounceOutcome.objects.filter(counted=True).count() == 1
    assert delivery.events.filter(kind=EventKind.BOUNCED).count() == 1
    assert not Suppression.objects.exists()  # one report, threshold two


@pytest.mark.django_db
def test_an_auto_reply_is_kept_as_ignored_and_never_counted():
    delivery = make_sent_delivery("holiday@example.com")
    result = bounce_ingest(raw=make_auto_reply(to=verp_of(delivery)), source="smtp")
    assert result.status == BounceMessageStatus.IGNORED
    assert result.kind == "auto-reply"
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT
    assert not delivery.events.exclude(kind=EventKind.SENT).exists()
    assert not BounceOutcome.objects.filter(counted=True).exists()
    assert Contact.objects.get(email="holiday@example.com").status == ContactStatus.ACTIVE


@pytest.mark.django_db
def test_a_bug_while_applying_keeps_the_report_as_error(monkeypatch):
    delivery = make_sent_delivery()

    def broken(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("delivery.intake.ingest._apply_outcome", broken)
    result = bounce_ingest(
        raw=make_dsn(recipient=delivery.email, to=verp_of(delivery)), source="pipe"
    )
    assert result.status == BounceMessageStatus.ERROR
    message = BounceMessage.objects.get()
    assert "boom" in message.error
    assert not message.outcomes.exists()  # the half-applied part was rolled back
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT


# --- the policy table -------------------------------------------------------------------------


DEFAULTS = {
    "hard": (1, 0, "suppress"),
    "complaint": (1, 0, "suppress"),
    "soft": (5, 30, "suppress"),
}


@pytest.mark.django_db
def test_default_policies_are_in_force_with_or_without_rows():
    def in_force():
        policies = {kind: bounce_policy_for(kind=kind) for kind in DEFAULTS}
        return {k: (p.count, p.window_days, p.action) for k, p in policies.items()}

    # Rows made by the data migration (a transactional test elsewhere may have flushed them).
    if BouncePolicy.objects.count() == 3:
        assert {
            p.kind: (p.count, p.window_days, p.action) for p in BouncePolicy.objects.all()
        } == DEFAULTS
    assert in_force() == DEFAULTS
    BouncePolicy.objects.all().delete()
    assert in_force() == DEFAULTS


@pytest.mark.django_db
def test_soft_bounces_suppress_at_the_threshold_within_the_window():
    campaigns = [
        Campaign.objects.create(name=f"C{i}", subject="s", html="h", from_email="a@skylark.test")
        for i in range(6)
    ]
    deliveries = [make_sent_delivery("full@example.com", campaign=c) for c in campaigns]
    now = timezone.now()

    def soft(delivery, when, nonce):
        raw = make_dsn(
            recipient=delivery.email,
            to=verp_of(delivery),
            status="4.2.2",
            diagnostic="smtp; 452 4.2.2 Mailbox full",
            nonce=nonce,
        )
        return bounce_ingest(raw=raw, source="pipe", now=when)

    # One old report outside the 30-day window, then four recent ones: below five.
    assert soft(deliveries[0], now - timedelta(days=40), "old").action == "counted"
    for i, delivery in enumerate(deliveries[1:5]):
        assert soft(delivery, now - timedelta(days=i), f"n{i}").action == "counted"
    assert not Suppression.objects.exists()
    delivery = deliveries[1]
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.reason == "mailbox_full"
    assert Contact.objects.get(email="full@example.com").status == ContactStatus.ACTIVE

    # The fifth within the window suppresses.
    assert soft(deliveries[5], now, "n5").action == "suppressed"
    assert Suppression.objects.filter(value="full@example.com").exists()
    assert Contact.objects.get(email="full@example.com").status == ContactStatus.BOUNCED


@pytest.mark.django_db
def test_a_delay_warning_is_recorded_but_not_counted():
    delivery = make_sent_delivery("slow@example.com")
    raw = make_dsn(
        recipient=delivery.email,
        to=verp_of(delivery),
        action="delayed",
        status="4.4.7",
        diagnostic="smtp; 451 4.4.7 delivery delayed",
    )
    result = bounce_ingest(raw=raw, source="pipe")
    assert result.status == BounceMessageStatus.APPLIED
    assert not BounceOutcome.objects.filter(counted=True).exists()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT
    assert delivery.events.filter(kind=EventKind.DEFERRED).exists()


@pytest.mark.django_db
def test_a_complaint_suppresses_and_marks_the_contact_complained():
    delivery = make_sent_delivery("angry@example.com")
    raw = make_arf(recipient=delivery.email, to=verp_of(delivery))
    result = bounce_ingest(raw=raw, source="imap")
    assert result.kind == "complaint"
    assert result.action == "suppressed"
    assert delivery.events.filter(kind=EventKind.COMPLAINT).count() == 1
    assert Suppression.objects.get(value="angry@example.com").reason == SuppressionReason.COMPLAINT
    assert Contact.objects.get(email="angry@example.com").status == ContactStatus.COMPLAINED
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT  # it was delivered


@pytest.mark.django_db
def test_the_unsubscribe_action_unsubscribes_every_list():
    BouncePolicy.objects.update_or_create(kind="hard", defaults={"action": "unsubscribe"})
    delivery = make_sent_delivery()
    result = bounce_ingest(
        raw=make_dsn(recipient=delivery.email, to=verp_of(delivery)), source="pipe"
    )
    assert result.action == "unsubscribed"
    assert set(
        Subscription.objects.filter(contact=delivery.contact).values_list("status", flat=True)
    ) == {SubscriptionStatus.UNSUBSCRIBED}
    assert not Suppression.objects.exists()


@pytest.mark.django_db
def test_policy_none_records_only():
    BouncePolicy.objects.update_or_create(kind="hard", defaults={"action": "none"})
    delivery = make_sent_delivery()
    result = bounce_ingest(
        raw=make_dsn(recipient=delivery.email, to=verp_of(delivery)), source="pipe"
    )
    assert result.action == "recorded"
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.BOUNCED
    assert not Suppression.objects.exists()


@pytest.mark.django_db
def test_a_report_for_a_synchronously_refused_delivery_leaves_its_status():
    delivery = make_sent_delivery()
    Delivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.FAILED, reason="x")
    bounce_ingest(raw=make_dsn(recipient=delivery.email, to=verp_of(delivery)), source="pipe")
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.reason == "x"


# --- rates ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_rates_per_campaign_and_domain():
    campaign = Campaign.objects.create(
        name="Rates", subject="s", html="h", from_email="a@skylark.test"
    )
    bounced = make_sent_delivery("dead@gmail.com", campaign=campaign)
    angry = make_sent_delivery("angry@gmail.com", campaign=campaign)
    make_sent_delivery("ok@outlook.com", campaign=campaign)
    bounce_ingest(raw=make_dsn(recipient=bounced.email, to=verp_of(bounced)), source="pipe")
    bounce_ingest(raw=make_arf(recipient=angry.email, to=verp_of(angry)), source="pipe")
    # More events on one delivery must not inflate the figures.
    for _ in range(3):
        angry.events.create(kind=EventKind.OPEN, created_at=timezone.now())

    (row,) = bounce_rates_by_campaign()
    assert (row.sent, row.bounced, row.complained) == (3, 1, 1)
    assert row.complaint_level == "danger"
    domains = {r.label: (r.sent, r.bounced, r.complained) for r in bounce_rates_by_domain()}
    assert domains == {"gmail.com": (2, 1, 1), "outlook.com": (1, 0, 0)}


# --- admin ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_admin_pages_show_reports_rates_and_mailboxes(admin_client):
    delivery = make_sent_delivery()
    result = bounce_ingest(
        raw=make_dsn(recipient=delivery.email, to=verp_of(delivery)), source="pipe"
    )
    bounce_ingest(raw=make_dsn(recipient="x@example.net", nonce="u"), source="imap")

    changelist = admin_client.get("/admin/delivery/bouncemessage/?status__exact=unmatched")
    assert changelist.status_code == 200
    page = admin_client.get(f"/admin/delivery/bouncemessage/{result.bounce_message_id}/change/")
    assert page.status_code == 200
    assert b"Final-Recipient: rfc822; dead@example.com" in page.content
    rates = admin_client.get("/admin/delivery/bouncemessage/rates/")
    assert rates.status_code == 200
    assert b"Spring" in rates.content and b"example.com" in rates.content
    assert admin_client.get("/admin/delivery/bouncepolicy/").status_code == 200

    response = admin_client.post(
        "/admin/delivery/mailbox/add/",
        {
            "name": "bounces",
            "protocol": "imap",
            "host": "imap.example.com",
            "port": 993,
            "security": "tls",
            "username": "bounces",
            "password": "s3cret",
            "folder": "INBOX",
            "enabled": "on",
        },
    )
    assert response.status_code == 302, response.content
    from delivery.intake.models import Mailbox

    mailbox = Mailbox.objects.get()
    assert mailbox.get_password() == "s3cret"
    assert b"s3cret" not in mailbox.password_encrypted.encode()
    assert (
        b"s3cret" not in admin_client.get(f"/admin/delivery/mailbox/{mailbox.pk}/change/").content
    )
