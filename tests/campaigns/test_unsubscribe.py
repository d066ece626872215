"""Unsubscribe: the RFC 8058 one-click matrix, the confirmation page, the preference center."""

from __future__ import annotations

import pytest
from django.test import Client
from django.test.client import encode_multipart

from campaigns.models import CampaignStats
from contacts.models import Subscription, SubscriptionStatus
from delivery.models import Delivery, DeliveryEvent, DeliveryStatus, EventKind
from delivery.tokens import make_token
from tests.factories import CampaignFactory, ContactListFactory, SubscriptionFactory, audience


@pytest.fixture
def delivery(db):
    news = audience(1, name="News")
    offers = ContactListFactory(name="Offers")
    contact = news.contacts.get()
    SubscriptionFactory(contact=contact, contact_list=offers)
    campaign = CampaignFactory(lists=[news])
    return Delivery.objects.create(
        campaign=campaign, contact=contact, email=contact.email, status=DeliveryStatus.SENT
    )


def _status(delivery, list_name="News") -> str:
    return Subscription.objects.get(contact=delivery.contact, contact_list__name=list_name).status


def _url(delivery) -> str:
    return f"/u/{make_token('unsubscribe', delivery.pk)}/"


def _client() -> Client:
    # No cookies, no CSRF token, no login: what a mailbox provider sends.
    return Client(enforce_csrf_checks=True)


def test_one_click_post_urlencoded_unsubscribes(delivery):
    response = _client().post(
        _url(delivery),
        "List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200
    assert _status(delivery) == SubscriptionStatus.UNSUBSCRIBED
    assert _status(delivery, "Offers") == SubscriptionStatus.SUBSCRIBED
    event = DeliveryEvent.objects.get(delivery=delivery, kind=EventKind.UNSUBSCRIBE)
    assert event.detail == "one-click"


def test_one_click_post_multipart_unsubscribes(delivery):
    body = encode_multipart("BoUnDaRy", {"List-Unsubscribe": "One-Click"})
    response = _client().post(
        _url(delivery), body, content_type="multipart/form-data; boundary=BoUnDaRy"
    )
    assert response.status_code == 200
    assert _status(delivery) == SubscriptionStatus.UNSUBSCRIBED


@pytest.mark.parametrize("method", ["get", "head"])
def test_get_and_head_never_unsubscribe(delivery, method):
    response = getattr(_client(), method)(_url(delivery))
    assert response.status_code == 200
    assert _status(delivery) == SubscriptionStatus.SUBSCRIBED
    assert not DeliveryEvent.objects.filter(kind=EventKind.UNSUBSCRIBE).exists()


def test_repeated_one_click_is_idempotent(delivery):
    for _ in range(3):
        response = _client().post(_url(delivery), {"List-Unsubscribe": "One-Click"})
        assert response.status_code == 200
    assert DeliveryEvent.objects.filter(kind=EventKind.UNSUBSCRIBE).count() == 1
    assert CampaignStats.objects.get(campaign=delivery.campaign).unsubscribes == 1


@pytest.mark.parametrize("token", ["1:forged", "not-a-token", "{valid}x"])
def test_forged_or_tampered_tokens_are_404_and_change_nothing(delivery, token):
    token = token.replace("{valid}", make_token("unsubscribe", delivery.pk))
    assert _client().post(f"/u/{token}/", {"List-Unsubscribe": "One-Click"}).status_code == 404
    assert _status(delivery) == SubscriptionStatus.SUBSCRIBED


def test_a_token_of_another_purpose_is_refused(delivery):
    token = make_token("open", delivery.pk)
    assert _client().post(f"/u/{token}/", {"List-Unsubscribe": "One-Click"}).status_code == 404


def test_confirmation_page_lists_the_contacts_lists_then_unsubscribes_on_post(delivery):
    page = _client().get(_url(delivery)).content.decode()
    assert "News" in page and "Offers" in page
    response = _client().post(_url(delivery), {})
    assert b"You are unsubscribed" in response.content
    assert _status(delivery) == SubscriptionStatus.UNSUBSCRIBED


def test_preference_center_keeps_the_chosen_lists(delivery):
    offers = Subscription.objects.get(contact=delivery.contact, contact_list__name="Offers")
    response = _client().post(
        _url(delivery), {"action": "preferences", "lists": [str(offers.contact_list_id)]}
    )
    assert response.status_code == 200
    assert _status(delivery) == SubscriptionStatus.UNSUBSCRIBED
    assert _status(delivery, "Offers") == SubscriptionStatus.SUBSCRIBED
    # Changing one's mind: back on News, counted once as an unsubscribe still.
    news = Subscription.objects.get(contact=delivery.contact, contact_list__name="News")
    _client().post(
        _url(delivery),
        {
            "action": "preferences",
            "lists": [str(news.contact_list_id), str(offers.contact_list_id)],
        },
    )
    assert _status(delivery) == SubscriptionStatus.SUBSCRIBED
    assert CampaignStats.objects.get(campaign=delivery.campaign).unsubscribes == 1


def test_one_click_writes_a_consent_record_with_the_client(delivery):
    from contacts.signup_models import ConsentRecord

    _client().post(
        _url(delivery),
        {"List-Unsubscribe": "One-Click"},
        REMOTE_ADDR="203.0.113.9",
        HTTP_USER_AGENT="Mailbox/1.0",
    )
    record = ConsentRecord.objects.get(contact_id=delivery.contact_id)
    assert record.action == "unsubscribed"
    assert record.ip == "203.0.113.9"
    assert record.user_agent == "Mailbox/1.0"
    assert record.source.endswith("one-click")


@pytest.mark.parametrize(
    ("peer", "forwarded", "recorded"),
    [
        ("10.0.0.5", "198.51.100.7", "198.51.100.7"),  # through the trusted proxy
        ("203.0.113.9", "198.51.100.7", "203.0.113.9"),  # spoofed by the client itself
    ],
)
def test_the_consent_record_takes_the_client_from_trusted_proxies_only(
    delivery, settings, peer, forwarded, recorded
):
    from contacts.signup_models import ConsentRecord

    settings.EDM_TRUSTED_PROXIES = ("10.0.0.0/8",)
    _client().post(
        _url(delivery),
        {"List-Unsubscribe": "One-Click"},
        REMOTE_ADDR=peer,
        HTTP_X_FORWARDED_FOR=forwarded,
    )
    assert ConsentRecord.objects.get(contact_id=delivery.contact_id).ip == recorded


@pytest.mark.django_db
def test_a_recipient_reached_through_a_segment_only_is_opted_out_of_everything():
    from contacts.models import Contact, ContactStatus
    from contacts.segment_models import Segment

    contact_list = audience(1, name="Elsewhere")
    contact = contact_list.contacts.get()
    segment = Segment.objects.create(
        name="Everyone", match="all", rules=[{"field": "status", "op": "eq", "value": "active"}]
    )
    campaign = CampaignFactory()
    campaign.segments.set([segment])
    delivery = Delivery.objects.create(campaign=campaign, contact=contact, email=contact.email)
    response = _client().post(_url(delivery), {"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    contact.refresh_from_db()
    assert contact.status == ContactStatus.UNSUBSCRIBED
    # Still subscribed to the list it was never mailed for; but an unsubscribed contact
    # receives no campaign at all.
    assert Subscription.objects.get(contact=contact).status == SubscriptionStatus.SUBSCRIBED
    assert Contact.objects.filter(status=ContactStatus.ACTIVE).count() == 0
