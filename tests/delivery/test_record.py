"""deliveries_record: each outcome's row and its event (one statement on PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns.sending.claims import deliveries_materialize
from delivery.models import Delivery, DeliveryEvent, DeliveryStatus
from delivery.services import deliveries_record
from mailkit.outcomes import Outcome
from tests.factories import CampaignFactory, audience


@pytest.mark.django_db
def test_outcomes_write_their_rows_and_events():
    contact_list = audience(3)
    campaign = CampaignFactory(lists=[contact_list])
    deliveries_materialize(campaign_id=campaign.pk, list_ids=[contact_list.pk])
    sent, deferred, bounced = Delivery.objects.filter(campaign=campaign).order_by("id")
    now = timezone.now().replace(microsecond=123456)
    retry = now + timedelta(minutes=5)
    assert (
        deliveries_record(
            [
                Outcome(
                    sent.id,
                    DeliveryStatus.SENT,
                    "",
                    250,
                    "2.0.0",
                    "250 2.0.0 Ok",
                    now,
                    message_id="<1@skylark.test>",
                ),
                Outcome(
                    deferred.id,
                    DeliveryStatus.DEFERRED,
                    "greylisted",
                    451,
                    "4.7.1",
                    "451 4.7.1 Try later",
                    now,
                    next_attempt_at=retry,
                ),
                Outcome(
                    bounced.id,
                    DeliveryStatus.BOUNCED,
                    "unknown_user",
                    550,
                    "5.1.1",
                    "550 5.1.1 No such user",
                    now,
                ),
            ]
        )  # fmt: skip
        == 3
    )
    rows = {d.id: d for d in Delivery.objects.filter(campaign=campaign)}
    assert rows[sent.id].status == "sent" and rows[sent.id].sent_at == now
    assert rows[sent.id].message_id == "<1@skylark.test>"
    assert rows[deferred.id].status == "deferred" and rows[deferred.id].next_attempt_at == retry
    assert rows[deferred.id].reason == "greylisted" and rows[deferred.id].sent_at is None
    assert rows[bounced.id].smtp_reply == "550 5.1.1 No such user"
    assert all(d.attempts == 1 and d.first_attempt_at == now for d in rows.values())
    events = {
        e.delivery_id: (e.kind, e.created_at, e.smtp_code, e.enhanced_status, e.detail, e.data)
        for e in DeliveryEvent.objects.all()
    }
    assert events == {
        sent.id: ("sent", now, 250, "2.0.0", "250 2.0.0 Ok", {}),
        deferred.id: ("deferred", now, 451, "4.7.1", "451 4.7.1 Try later",
                      {"reason": "greylisted"}),
        bounced.id: ("bounced", now, 550, "5.1.1", "550 5.1.1 No such user",
                     {"reason": "unknown_user"}),
    }  # fmt: skip


def _hard_bounce(delivery, now) -> Outcome:
    return Outcome(
        delivery.id,
        DeliveryStatus.BOUNCED,
        "unknown_user",
        550,
        "5.1.1",
        "550 5.1.1 No such user",
        now,
        suppress=True,
    )


@pytest.mark.django_db
def test_a_synchronous_hard_bounce_follows_the_bounce_policy_table():
    """One policy table for every road (issue "One house"): a 5xx in the SMTP conversation
    obeys the admin's hard-bounce rule as a bounce report does."""
    from contacts.models import Contact, ContactStatus, Suppression
    from delivery.intake.models import BouncePolicy

    contact_list = audience(1)
    first, second, third = (CampaignFactory(lists=[contact_list]) for _ in range(3))
    for campaign in (first, second, third):
        deliveries_materialize(campaign_id=campaign.pk, list_ids=[contact_list.pk])
    now = timezone.now()
    contact = contact_list.contacts.get()

    # The rule turned off: recorded, nobody suppressed.
    BouncePolicy.objects.update_or_create(kind="hard", defaults={"action": "none", "count": 1})
    deliveries_record([_hard_bounce(first.deliveries.get(), now)])
    assert not Suppression.objects.exists()
    assert Contact.objects.get(pk=contact.pk).status == ContactStatus.ACTIVE

    # Three hard bounces within 30 days suppress: the one above counts, the second does not
    # reach the threshold, the third does.
    BouncePolicy.objects.filter(kind="hard").update(action="suppress", count=3, window_days=30)
    deliveries_record([_hard_bounce(second.deliveries.get(), now)])
    assert not Suppression.objects.exists()
    deliveries_record([_hard_bounce(third.deliveries.get(), now)])
    assert Suppression.objects.get().value == contact.email.lower()
    assert Contact.objects.get(pk=contact.pk).status == ContactStatus.BOUNCED
