"""Campaigns that target lists and segments: the union, each address once, exclusions kept."""

from __future__ import annotations

import pytest

from campaigns.models import CampaignStatus
from campaigns.preflight import campaign_preflight, sample_contacts
from campaigns.sending.claims import deliveries_materialize
from campaigns.sending.dispatch import campaign_dispatch
from contacts.models import ContactStatus, Segment, SubscriptionStatus, Suppression
from delivery.models import Delivery
from tests.factories import (
    CampaignFactory,
    ContactFactory,
    ContactListFactory,
    SubscriptionFactory,
)


@pytest.fixture
def no_broker(monkeypatch):
    """Record batch tasks instead of sending them to Redis."""
    from campaigns import tasks

    enqueued: list[tuple] = []
    monkeypatch.setattr(tasks.campaign_send_batch, "delay", lambda *a: enqueued.append(a))
    return enqueued


@pytest.fixture
def audience(db, no_broker):
    """A list, a segment of Paris contacts, and people in one, the other, both or neither."""
    news = ContactListFactory(name="News")

    def person(local, *, city="", subscribed=None, **kwargs):
        contact = ContactFactory(
            email=f"{local}@example.com", attributes={"city": city} if city else {}, **kwargs
        )
        if subscribed is not None:
            SubscriptionFactory(contact=contact, contact_list=news, status=subscribed)
        return contact

    people = {
        "list_only": person("list_only", subscribed=SubscriptionStatus.SUBSCRIBED),
        "both": person("both", city="Paris", subscribed=SubscriptionStatus.SUBSCRIBED),
        "segment_only": person("segment_only", city="Paris"),
        "segment_unsubscribed_from_list": person(
            "seg_unsub", city="Paris", subscribed=SubscriptionStatus.UNSUBSCRIBED
        ),
        "list_unconfirmed": person("unconfirmed", subscribed=SubscriptionStatus.UNCONFIRMED),
        "neither": person("neither", city="Berlin"),
        "segment_globally_unsubscribed": person(
            "gone", city="Paris", status=ContactStatus.UNSUBSCRIBED
        ),
        "segment_bounced": person("bounced", city="Paris", status=ContactStatus.BOUNCED),
        "list_suppressed": person("suppressed", subscribed=SubscriptionStatus.SUBSCRIBED),
        "segment_suppressed_domain": ContactFactory(
            email="x@blocked.example", attributes={"city": "Paris"}
        ),
    }
    Suppression.objects.create(value="suppressed@example.com", reason="manual")
    Suppression.objects.create(value="blocked.example", scope="domain", reason="manual")
    paris = Segment.objects.create(
        name="Paris", rules=[{"field": "attributes.city", "op": "eq", "value": "Paris"}]
    )
    return news, paris, people


EXPECTED = {"both", "list_only", "segment_only", "seg_unsub"}


def _recipients(campaign) -> set[str]:
    return {e.split("@")[0] for e in campaign.deliveries.values_list("email", flat=True)}


def test_dispatch_sends_to_the_union_of_lists_and_segments_once(audience):
    news, paris, _ = audience
    campaign = CampaignFactory(lists=[news], status=CampaignStatus.SENDING)
    campaign.segments.set([paris])
    campaign_dispatch(campaign_id=campaign.pk)
    assert _recipients(campaign) == EXPECTED
    assert Delivery.objects.filter(campaign=campaign).count() == len(EXPECTED)
    campaign.refresh_from_db()
    assert campaign.total_recipients == len(EXPECTED)


def test_materialize_is_rerunnable_without_duplicates(audience):
    news, paris, _ = audience
    campaign = CampaignFactory(lists=[news])
    args = {
        "campaign_id": campaign.pk,
        "list_ids": [news.pk],
        "segment_querysets": [paris.contacts()],
    }
    assert deliveries_materialize(**args) == len(EXPECTED)
    assert deliveries_materialize(**args) == 0
    assert campaign.deliveries.count() == len(EXPECTED)


def test_segment_only_campaign_ignores_list_subscription_unless_its_rules_say_so(audience):
    news, paris, _ = audience
    campaign = CampaignFactory(status=CampaignStatus.SENDING)
    campaign.segments.set([paris])
    campaign_dispatch(campaign_id=campaign.pk)
    assert _recipients(campaign) == {"both", "segment_only", "seg_unsub"}

    subscribed_parisians = Segment.objects.create(
        name="Paris subscribers",
        rules=[
            {"field": "attributes.city", "op": "eq", "value": "Paris"},
            {"field": "list", "op": "in", "value": news.pk},
        ],
    )
    other = CampaignFactory(status=CampaignStatus.SENDING)
    other.segments.set([subscribed_parisians])
    campaign_dispatch(campaign_id=other.pk)
    assert _recipients(other) == {"both"}


def test_two_overlapping_segments_give_each_address_once(audience):
    _, paris, _ = audience
    example = Segment.objects.create(
        name="Example", rules=[{"field": "email", "op": "ends_with", "value": "@example.com"}]
    )
    campaign = CampaignFactory()
    created = deliveries_materialize(
        campaign_id=campaign.pk,
        list_ids=[],
        segment_querysets=[paris.contacts(), example.contacts()],
    )
    assert created == campaign.deliveries.count()
    assert _recipients(campaign) == {
        "list_only",
        "both",
        "segment_only",
        "seg_unsub",
        "unconfirmed",
        "neither",
    }


def test_preflight_counts_and_samples_segment_recipients(audience):
    _, paris, _ = audience
    campaign = CampaignFactory()
    campaign.segments.set([paris])
    report = campaign_preflight(campaign)
    assert "no_lists" not in report.codes()
    # The pre-flight count leaves suppression to the send: x@blocked.example is still counted.
    assert report.recipients == 4
    sampled = {c.email.split("@")[0] for c in sample_contacts(campaign, size=10)}
    assert sampled == {"both", "segment_only", "seg_unsub", "x"}


def test_a_segment_broken_since_the_send_fails_the_dispatch_with_a_reason(audience):
    news, _, _ = audience
    other = ContactListFactory(name="Temporary")
    broken = Segment.objects.create(
        name="Broken", rules=[{"field": "list", "op": "in", "value": other.pk}]
    )
    campaign = CampaignFactory(lists=[news], status=CampaignStatus.SENDING)
    campaign.segments.set([broken])
    other.delete()
    assert campaign_dispatch(campaign_id=campaign.pk) == 0
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.FAILED
    assert "segment" in campaign.status_reason
    assert not campaign.deliveries.exists()
