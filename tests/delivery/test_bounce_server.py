"""The bounce server with a real SMTP client, and the `ingest_bounce` pipe command."""

from __future__ import annotations

import io
import smtplib

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import DatabaseError

from contacts.models import Contact, ContactStatus, Suppression
from delivery.intake.models import BounceMessage, BounceMessageStatus
from delivery.models import DeliveryStatus
from tests.delivery.test_intake import make_dsn, make_sent_delivery, verp_of


def test_a_dsn_over_smtp_bounces_the_delivery_and_suppresses_the_address(bounce_server):
    delivery = make_sent_delivery()
    verp = verp_of(delivery)
    with smtplib.SMTP(bounce_server.hostname, bounce_server.port, timeout=10) as client:
        client.ehlo("mx.example.com")
        # RFC 3464: reports travel with a null reverse path.
        refused = client.sendmail("<>", [verp], make_dsn(recipient=delivery.email, to=verp))
    assert refused == {}

    message = BounceMessage.objects.get()
    assert message.source == "smtp"
    assert message.status == BounceMessageStatus.APPLIED
    assert message.envelope_to == verp
    assert message.delivery_id == delivery.pk
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.BOUNCED
    assert Suppression.objects.filter(value=delivery.email).exists()
    assert Contact.objects.get(pk=delivery.contact_id).status == ContactStatus.BOUNCED


def test_the_envelope_verp_matches_even_when_the_headers_do_not_name_it(bounce_server):
    delivery = make_sent_delivery()
    raw = make_dsn(recipient=delivery.email, to="bounces@" + settings.EDM_BOUNCE_DOMAIN)
    with smtplib.SMTP(bounce_server.hostname, bounce_server.port, timeout=10) as client:
        client.sendmail("", [verp_of(delivery)], raw)
    message = BounceMessage.objects.get()
    assert message.matched_by == "verp"
    assert message.delivery_id == delivery.pk


def test_recipients_at_other_domains_are_refused(bounce_server):
    with smtplib.SMTP(bounce_server.hostname, bounce_server.port, timeout=10) as client:
        client.ehlo("mx.example.com")
        client.mail("<>")
        code, reply = client.rcpt("victim@example.org")
        assert code == 550
        assert b"5.1.1" in reply
        code, _ = client.rcpt("postmaster@" + settings.EDM_BOUNCE_DOMAIN.upper())
        assert code == 250
    assert not BounceMessage.objects.exists()


def test_oversized_messages_are_refused(bounce_server):
    delivery = make_sent_delivery()
    raw = make_dsn(recipient=delivery.email, to=verp_of(delivery))
    big = raw + b"x" * 76 + b"\r\n" + (b"y" * 998 + b"\r\n") * 80  # > 64 KB
    with smtplib.SMTP(bounce_server.hostname, bounce_server.port, timeout=10) as client:
        client.ehlo("mx.example.com")
        assert client.has_extn("size")
        # Announced size: refused at MAIL FROM (RFC 1870).
        code, _ = client.mail("<>", options=[f"SIZE={len(big)}"])
        assert code == 552
        client.rset()
        # Not announced: refused after the data.
        client.mail("<>")
        client.rcpt(verp_of(delivery))
        code, _ = client.data(big)
        assert code == 552
    assert not BounceMessage.objects.exists()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT


def test_a_database_error_is_a_temporary_failure(bounce_server, monkeypatch):
    def unavailable(**kwargs):
        raise DatabaseError("database is locked")

    monkeypatch.setattr("delivery.intake.server.bounce_ingest", unavailable)
    with smtplib.SMTP(bounce_server.hostname, bounce_server.port, timeout=10) as client:
        client.ehlo("mx.example.com")
        client.mail("<>")
        client.rcpt("bounces@" + settings.EDM_BOUNCE_DOMAIN)
        code, _ = client.data(make_dsn(recipient="a@example.com"))
    assert code == 451


# --- the MTA pipe -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_ingest_bounce_reads_stdin_and_applies_the_report():
    delivery = make_sent_delivery()
    raw = make_dsn(recipient=delivery.email, to=verp_of(delivery))
    out = io.StringIO()
    call_command("ingest_bounce", stdin=io.BytesIO(raw), stdout=out)
    assert "applied" in out.getvalue()
    message = BounceMessage.objects.get()
    assert message.source == "pipe"
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.BOUNCED


@pytest.mark.django_db
def test_ingest_bounce_uses_the_recipient_argument_as_the_envelope():
    delivery = make_sent_delivery()
    raw = make_dsn(recipient=delivery.email)  # headers name no VERP address
    call_command(
        "ingest_bounce",
        "--recipient",
        verp_of(delivery),
        stdin=io.BytesIO(raw),
        stdout=io.StringIO(),
    )
    assert BounceMessage.objects.get().matched_by == "verp"


@pytest.mark.django_db
def test_ingest_bounce_exits_0_for_an_unmatched_report_and_keeps_it():
    call_command(
        "ingest_bounce", stdin=io.BytesIO(make_dsn(recipient="x@example.net")), stdout=io.StringIO()
    )
    assert BounceMessage.objects.get().status == BounceMessageStatus.UNMATCHED


@pytest.mark.django_db
def test_ingest_bounce_exits_75_on_a_database_error(monkeypatch):
    def unavailable(**kwargs):
        raise DatabaseError("could not connect")

    monkeypatch.setattr("delivery.management.commands.ingest_bounce.bounce_ingest", unavailable)
    with pytest.raises(SystemExit) as exit_info:
        call_command(
            "ingest_bounce",
            stdin=io.BytesIO(make_dsn(recipient="x@example.net")),
            stdout=io.StringIO(),
            stderr=io.StringIO(),
        )
    assert exit_info.value.code == 75
