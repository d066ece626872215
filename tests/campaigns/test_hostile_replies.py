"""A hostile receiving server: NUL bytes and invalid UTF-8 in its replies (issue 14, item 6).

PostgreSQL refused the batch's outcomes (NUL in text, \\u0000 in jsonb), the delivered
messages stayed pending and were all sent again after the lease. Every message must leave
exactly once and every outcome must be written, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import collections

import pytest
from django.utils import timezone

from campaigns.models import Campaign, CampaignStatus
from campaigns.sending import claims
from campaigns.sending.batch import campaign_send_batch
from campaigns.sending.dispatch import campaign_dispatch
from campaigns.services import campaign_send
from contacts.models import Contact, ContactStatus, Suppression
from delivery import services as delivery_services
from delivery.models import Delivery, DeliveryEvent, DeliveryLease
from delivery.recording import UNSTORABLE_REPLY
from mailkit.outcomes import Outcome
from tests.factories import CampaignFactory, audience

SIZE = 22


def _started(no_broker) -> tuple[Campaign, int, int]:
    campaign = CampaignFactory(lists=[audience(SIZE)])
    campaign_send(campaign_id=campaign.pk)
    campaign_dispatch(campaign_id=campaign.pk)
    batches = [args for name, args in no_broker if name == "campaign_send_batch"]
    assert len(batches) == 1
    _, id_from, id_to = batches[0]
    return campaign, id_from, id_to


def _no_refused_text(*values: str) -> bool:
    return not any("\x00" in v or any("\ud800" <= c <= "\udfff" for c in v) for v in values)


@pytest.mark.django_db(transaction=True)
def test_nul_and_invalid_utf8_in_replies_cost_no_outcome_and_send_nothing_twice(
    smtp_settings, no_broker
):
    server = smtp_settings
    # 250 replies after DATA: the message was delivered, whatever the text says.
    server.script("data", "250 2.0.0 queued as \x00\x00 evil", recipient="r1@example.com")
    server.script("data", b"250 2.0.0 ok \xff\xfe\xc3(", recipient="r2@example.com")
    server.script("data", b"250 2.0.0 \x00 and \xed\xa0\x80", recipient="r3@example.com")
    # Refusals carry the same text into the classifier, the row, the event and its jsonb.
    server.script("rcpt", "550 5.1.1 no such \x00 user", recipient="r4@example.com")
    server.script("rcpt", b"450 4.2.0 busy \xff\x00 later", recipient="r5@example.com")
    server.script("data", b"554 5.7.1 spam \x80\x00", recipient="r6@example.com")

    campaign, id_from, id_to = _started(no_broker)
    campaign_send_batch(campaign_id=campaign.pk, id_from=id_from, id_to=id_to)

    rows = {
        d.email: d for d in Delivery.objects.filter(campaign=campaign).order_by("id")
    }  # every outcome written: nothing left pending or under a lease
    assert len(rows) == SIZE
    statuses = collections.Counter(d.status for d in rows.values())
    assert statuses == {"sent": SIZE - 3, "bounced": 1, "deferred": 1, "failed": 1}
    assert DeliveryLease.objects.count() == 0
    assert all(d.attempts == 1 for d in rows.values())
    assert DeliveryEvent.objects.filter(delivery__campaign=campaign).count() == SIZE

    # Each accepted message went out exactly once (r4 and r5 refused at RCPT, r6 at DATA).
    received = collections.Counter(m.rcpt_tos[0] for m in server.messages)
    assert set(received.values()) == {1}
    assert len(received) == SIZE - 3

    # The replies are kept, cleaned: each NUL and each undecodable byte a U+FFFD.
    assert rows["r1@example.com"].smtp_reply == "250 2.0.0 queued as \ufffd\ufffd evil"
    assert rows["r2@example.com"].smtp_reply == "250 2.0.0 ok \ufffd\ufffd\ufffd("
    assert rows["r3@example.com"].smtp_reply == "250 2.0.0 \ufffd and \ufffd\ufffd\ufffd"
    assert rows["r4@example.com"].status == "bounced"
    assert rows["r4@example.com"].smtp_reply == "550 5.1.1 no such \ufffd user"
    assert rows["r5@example.com"].status == "deferred"
    assert rows["r6@example.com"].enhanced_status == "5.7.1"
    for delivery in rows.values():
        assert _no_refused_text(delivery.smtp_reply, delivery.reason, delivery.enhanced_status)
    for event in DeliveryEvent.objects.filter(delivery__campaign=campaign):
        assert _no_refused_text(event.detail, *map(str, event.data.values()))

    # The hard bounce acted as one: suppressed, contact bounced.
    assert Suppression.objects.filter(value="r4@example.com").exists()
    assert Contact.objects.get(email="r4@example.com").status == ContactStatus.BOUNCED

    # And nothing is sent again later: the sweeper finds no lease to take back.
    assert claims.deliveries_reclaim_expired() == 0
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.SENDING  # r5 is deferred, due later


@pytest.mark.django_db(transaction=True)
def test_a_row_the_database_refuses_costs_only_itself(no_broker):
    """Even past the cleaning, one row the database refuses (here an SMTP code beyond any
    integer column) must not cost the flush: the others are written as they are, and the bad
    one with its status (the message did leave) and without its text."""
    campaign, id_from, id_to = _started(no_broker)
    ids = list(
        Delivery.objects.filter(campaign=campaign).order_by("id").values_list("id", flat=True)
    )
    now = timezone.now()
    outcomes = [
        Outcome(
            delivery_id=delivery_id,
            status="sent",
            reason="",
            smtp_code=2**63 if index == 7 else 250,
            enhanced_status="2.0.0",
            reply=f"250 2.0.0 queued as {index}",
            attempted_at=now,
        )
        for index, delivery_id in enumerate(ids)
    ]
    assert delivery_services.deliveries_record(outcomes) == SIZE

    rows = dict(Delivery.objects.filter(campaign=campaign).values_list("id", "status"))
    assert set(rows.values()) == {"sent"}
    bad = Delivery.objects.get(pk=ids[7])
    assert (bad.smtp_code, bad.smtp_reply) == (None, UNSTORABLE_REPLY)
    assert Delivery.objects.get(pk=ids[8]).smtp_reply == "250 2.0.0 queued as 8"
    assert DeliveryEvent.objects.filter(delivery__campaign=campaign).count() == SIZE
