"""List-Unsubscribe on marketing transactional messages, and their one-click unsubscribe."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import default as default_policy

import pytest
from django.conf import settings

from api import services
from api.models import Category, TransactionalMessage
from contacts.models import (
    Contact,
    ContactStatus,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
)
from contacts.signup_models import ConsentRecord
from delivery.models import DeliveryStatus as MessageStatus
from delivery.tokens import make_token, unsubscribe_token_parse
from tests.factories import ContactFactory, SubscriptionFactory


@pytest.fixture
def smtp(smtp_server_factory, settings):
    server = smtp_server_factory(starttls=False)
    settings.EDM_SMTP_URL = server.url
    return server


def accept(api_key, *, category: str, to: str = "ann@example.com", html: str = "<p>Hi</p>"):
    key, _ = api_key
    request = services.SendRequest(to_email=to, subject="News", html=html, category=category)
    message, _ = services.message_accept(api_key=key, request=request)
    return message


def headers(message: TransactionalMessage):
    return message_from_bytes(bytes(message.raw), policy=default_policy)


def one_click_path(message: TransactionalMessage) -> str:
    """The https URL of the message's List-Unsubscribe, as a path for the test client."""
    value = " ".join(str(headers(message)["List-Unsubscribe"]).split())
    urls = [part.strip().strip("<>") for part in value.split(",")]
    [url] = [u for u in urls if u.startswith(("https://", "http://"))]
    assert url.startswith(settings.EDM_PUBLIC_URL + "/")
    return url.removeprefix(settings.EDM_PUBLIC_URL)


def test_marketing_message_carries_list_unsubscribe_and_one_click(api_key):
    message = accept(api_key, category=Category.MARKETING)
    email = headers(message)
    value = " ".join(str(email["List-Unsubscribe"]).split())
    mailto = next(p.strip("<> ") for p in value.split(",") if "mailto:" in p)
    address, _, subject = mailto.removeprefix("mailto:").partition("?subject=unsubscribe%20")
    assert address.endswith(f"@{settings.EDM_BOUNCE_DOMAIN}")
    # The signed token of this message, in the address and in the subject (issue 14.2).
    assert address == f"unsubscribe+{subject}@{settings.EDM_BOUNCE_DOMAIN}"
    # The token names the message's delivery, as a campaign's does.
    assert unsubscribe_token_parse(subject) == message.delivery_id
    assert email["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert one_click_path(message).startswith("/api/unsubscribe/")


def test_transactional_message_carries_neither_header(api_key):
    email = headers(accept(api_key, category=Category.TRANSACTIONAL))
    assert email["List-Unsubscribe"] is None
    assert email["List-Unsubscribe-Post"] is None


def test_marketing_template_sees_its_unsubscribe_url(api_key):
    html = '<p>News</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>'
    message = accept(api_key, category=Category.MARKETING, html=html)
    body = headers(message).get_body(("html",)).get_content()
    assert f'href="{settings.EDM_PUBLIC_URL}{one_click_path(message)}"' in body


def test_one_click_post_unsubscribes_and_later_marketing_is_suppressed(client, api_key, smtp):
    contact = ContactFactory(email="ann@example.com")
    SubscriptionFactory(contact=contact)
    first = accept(api_key, category=Category.MARKETING)
    path = one_click_path(first)

    # RFC 8058: the provider POSTs "List-Unsubscribe=One-Click", with no CSRF token.
    client.handler.enforce_csrf_checks = True
    response = client.post(path, {"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200 and response.content == b"Unsubscribed.\n"

    suppression = Suppression.objects.get(value="ann@example.com")
    assert suppression.reason == SuppressionReason.UNSUBSCRIBE
    contact.refresh_from_db()
    assert contact.status == ContactStatus.UNSUBSCRIBED
    assert Subscription.objects.get(contact=contact).status == SubscriptionStatus.UNSUBSCRIBED
    assert ConsentRecord.objects.filter(contact=contact, action="unsubscribed").count() == 1
    assert [e.kind for e in first.delivery.events.all()] == ["unsubscribe"]

    # A repeat changes nothing and adds no event.
    assert client.post(path, {"List-Unsubscribe": "One-Click"}).status_code == 200
    assert first.delivery.events.count() == 1

    later = accept(api_key, category=Category.MARKETING)
    assert services.message_send(message_id=later.pk) == MessageStatus.SUPPRESSED
    receipt = accept(api_key, category=Category.TRANSACTIONAL)
    assert services.message_send(message_id=receipt.pk) == MessageStatus.SENT
    assert [m.rcpt_tos for m in smtp.messages] == [("ann@example.com",)]


def test_an_address_without_a_contact_is_suppressed_too(client, api_key):
    message = accept(api_key, category=Category.MARKETING, to="nobody@example.com")
    assert (
        client.post(one_click_path(message), {"List-Unsubscribe": "One-Click"}).status_code == 200
    )
    assert not Contact.objects.exists()
    assert services.suppression_reason(email="Nobody@example.com", category="marketing") == (
        "unsubscribe"
    )
    assert services.suppression_reason(email="nobody@example.com", category="transactional") == ""


def test_get_only_confirms_and_the_page_button_unsubscribes(client, api_key):
    message = accept(api_key, category=Category.MARKETING)
    path = one_click_path(message)
    page = client.get(path)
    assert page.status_code == 200 and b'<form method="post">' in page.content
    assert client.head(path).status_code == 200
    assert not Suppression.objects.exists()
    done = client.post(path, {})
    assert done.status_code == 200 and b"You are unsubscribed" in done.content
    assert Suppression.objects.filter(value="ann@example.com", reason="unsubscribe").exists()


def test_forged_or_foreign_tokens_are_404_and_change_nothing(client, api_key):
    message = accept(api_key, category=Category.MARKETING)
    path = one_click_path(message)
    tampered = path[:-3] + ("A" if path[-3] != "A" else "B") + path[-2:]
    # A campaign's unsubscribe token (another purpose) of the same number.
    campaign_token = make_token("unsubscribe", message.public_id.int)
    # A valid token of a transactional (non-marketing) message: it never had a link.
    receipt = accept(api_key, category=Category.TRANSACTIONAL)
    receipt_token = make_token("unsubscribe-message", receipt.public_id.int)
    for bad in (
        tampered,
        f"/api/unsubscribe/{campaign_token}/",
        f"/api/unsubscribe/{receipt_token}/",
    ):
        assert client.post(bad, {"List-Unsubscribe": "One-Click"}).status_code == 404
    assert not Suppression.objects.exists()


@pytest.mark.django_db
def test_contact_unsubscribe_from_named_lists_keeps_a_consent_record_each():
    contact = ContactFactory(email="bo@example.com")
    news = SubscriptionFactory(contact=contact, contact_list__name="News")
    offers = SubscriptionFactory(contact=contact, contact_list__name="Offers")

    assert services.contact_unsubscribe(email="BO@example.com", lists=["News"]) == 1
    assert services.contact_unsubscribe(email="bo@example.com", lists=["News"]) == 0

    news.refresh_from_db()
    offers.refresh_from_db()
    assert (news.status, offers.status) == ("unsubscribed", "subscribed")
    records = ConsentRecord.objects.filter(contact=contact)
    assert [(r.subscription_id, r.action, r.source) for r in records] == [
        (news.pk, "unsubscribed", "api")
    ]
