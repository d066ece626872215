"""Public sign-up: form POST -> confirmation message over real SMTP -> confirm -> subscribed,
with consent records; honeypot, rate limit, suppression, expired and tampered tokens."""

from __future__ import annotations

import re
import time
from email import message_from_bytes
from email.policy import default as default_policy
from urllib.parse import urlsplit

import pytest
from django.core import signing
from django.test import Client

from contacts.models import (
    ConsentAction,
    ConsentRecord,
    Contact,
    ContactStatus,
    SignupForm,
    Subscription,
    SubscriptionStatus,
    Suppression,
)
from contacts.signup import confirm_token, signup_embed_html
from tests.factories import ContactFactory, ContactListFactory, SubscriptionFactory

AGENT = "Mozilla/5.0 (signup test)"


@pytest.fixture
def smtp_settings(settings, smtp_server, celery_eager):
    settings.EDM_SMTP_URL = smtp_server.url
    settings.EDM_SMTP_TLS_CA_FILE = smtp_server.ca_file
    settings.EDM_SMTP_TIMEOUT_SECONDS = 5
    return smtp_server


@pytest.fixture
def signup_form(db, redis_client):
    return SignupForm.objects.create(
        contact_list=ContactListFactory(name="Newsletter"),
        title="Join our newsletter",
        consent_text="We send one email a week. Unsubscribe at any time.",
        attribute_fields=[{"key": "city", "label": "City"}],
        from_email="hello@skylark.test",
    )


def _client() -> Client:
    # No cookies and no CSRF token: what a plain <form> on another site posts.
    return Client(enforce_csrf_checks=True, HTTP_USER_AGENT=AGENT, REMOTE_ADDR="203.0.113.7")


def _post(client, form, captured, **data):
    with captured(execute=True):
        return client.post(f"/subscribe/{form.public_token}/", data)


def _confirm_path(message) -> str:
    parsed = message_from_bytes(message.data, policy=default_policy)
    text = parsed.get_body(("plain",)).get_content()
    url = re.search(r"https?://\S+/subscribe/confirm/\S+?/", text).group(0)
    return urlsplit(url).path


def test_double_opt_in_end_to_end(signup_form, smtp_settings, django_capture_on_commit_callbacks):
    client = _client()
    page = client.get(f"/subscribe/{signup_form.public_token}/")
    assert page.status_code == 200 and b'name="website"' in page.content

    response = _post(
        client,
        signup_form,
        django_capture_on_commit_callbacks,
        email="New.Person@Example.COM",
        name="New Person",
        city="Lyon",
        website="",
    )
    assert response.status_code == 200
    assert b"check your inbox" in response.content
    contact = Contact.objects.get(email="New.Person@example.com")
    assert (contact.name, contact.attributes) == ("New Person", {"city": "Lyon"})
    subscription = Subscription.objects.get(contact=contact)
    assert subscription.status == SubscriptionStatus.UNCONFIRMED
    assert subscription.source == f"form:{signup_form.pk}"

    (message,) = smtp_settings.wait_for_messages(1)
    assert message.rcpt_tos == ("New.Person@example.com",)
    assert message.mail_from.startswith("bounces@")
    parsed = message_from_bytes(message.data, policy=default_policy)
    assert "Newsletter" in parsed["Subject"]
    assert parsed["From"].addresses[0].addr_spec == "hello@skylark.test"
    path = _confirm_path(message)

    # A GET (a link scanner) only shows the button.
    assert client.get(path).status_code == 200
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.UNCONFIRMED

    confirmed = client.post(path)
    assert confirmed.status_code == 200 and b"subscribed" in confirmed.content
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.SUBSCRIBED
    records = list(ConsentRecord.objects.filter(subscription=subscription).order_by("id"))
    assert [r.action for r in records] == [ConsentAction.SUBSCRIBED, ConsentAction.CONFIRMED]
    assert all(r.ip == "203.0.113.7" and r.user_agent == AGENT for r in records)
    assert all(r.source == f"form:{signup_form.pk}" for r in records)
    assert "Unsubscribe at any time" in records[0].form_text
    assert "City" in records[0].form_text
    # Confirming twice is harmless.
    assert client.post(path).status_code == 200
    assert ConsentRecord.objects.filter(subscription=subscription).count() == 2


def test_single_opt_in_subscribes_at_once_and_redirects(
    signup_form, smtp_settings, django_capture_on_commit_callbacks
):
    signup_form.double_opt_in = False
    signup_form.success_url = "https://example.org/thanks"
    signup_form.save()
    response = _post(_client(), signup_form, django_capture_on_commit_callbacks, email="a@b.org")
    assert response.status_code == 302 and response["Location"] == "https://example.org/thanks"
    assert Subscription.objects.get(contact__email="a@b.org").status == "subscribed"
    assert not smtp_settings.messages


def test_existing_contact_keeps_its_data(
    signup_form, smtp_settings, django_capture_on_commit_callbacks
):
    contact = ContactFactory(email="kept@example.com", name="Kept Name", attributes={"plan": "pro"})
    _post(
        _client(),
        signup_form,
        django_capture_on_commit_callbacks,
        email="KEPT@example.com",
        name="Other Name",
        city="Rome",
    )
    contact.refresh_from_db()
    assert (contact.name, contact.attributes) == ("Kept Name", {"plan": "pro"})
    assert Contact.objects.filter(email__iexact="kept@example.com").count() == 1
    assert Subscription.objects.get(contact=contact).status == SubscriptionStatus.UNCONFIRMED


def test_unsubscribed_contact_goes_through_double_opt_in_again(
    signup_form, smtp_settings, django_capture_on_commit_callbacks
):
    signup_form.double_opt_in = False  # even on a single opt-in form
    signup_form.save()
    contact = ContactFactory(email="back@example.com", status=ContactStatus.UNSUBSCRIBED)
    SubscriptionFactory(
        contact=contact,
        contact_list=signup_form.contact_list,
        status=SubscriptionStatus.UNSUBSCRIBED,
    )
    client = _client()
    _post(client, signup_form, django_capture_on_commit_callbacks, email="back@example.com")
    subscription = Subscription.objects.get(contact=contact)
    assert subscription.status == SubscriptionStatus.UNCONFIRMED
    (message,) = smtp_settings.wait_for_messages(1)
    client.post(_confirm_path(message))
    subscription.refresh_from_db()
    contact.refresh_from_db()
    assert subscription.status == SubscriptionStatus.SUBSCRIBED
    assert contact.status == ContactStatus.ACTIVE


def test_suppressed_address_is_accepted_but_never_subscribed(
    signup_form, smtp_settings, django_capture_on_commit_callbacks
):
    Suppression.objects.create(value="blocked.example", scope="domain", reason="manual")
    normal = _post(_client(), signup_form, django_capture_on_commit_callbacks, email="x@ok.org")
    suppressed = _post(
        _client(), signup_form, django_capture_on_commit_callbacks, email="x@blocked.example"
    )
    assert suppressed.status_code == normal.status_code == 200
    assert suppressed.content == normal.content  # nothing tells the two apart
    assert not Contact.objects.filter(email="x@blocked.example").exists()
    assert len(smtp_settings.wait_for_messages(1)) == 1
    time.sleep(0.2)
    assert [m.rcpt_tos for m in smtp_settings.messages] == [("x@ok.org",)]


def test_honeypot_filled_pretends_success_and_does_nothing(
    signup_form, smtp_settings, django_capture_on_commit_callbacks
):
    response = _post(
        _client(),
        signup_form,
        django_capture_on_commit_callbacks,
        email="bot@example.com",
        website="http://spam.example",
    )
    assert response.status_code == 200 and b"check your inbox" in response.content
    assert not Contact.objects.filter(email="bot@example.com").exists()
    assert not smtp_settings.messages


def test_invalid_address_shows_the_form_again(signup_form, django_capture_on_commit_callbacks):
    response = _post(_client(), signup_form, django_capture_on_commit_callbacks, email="nope")
    assert response.status_code == 400
    assert b"valid email" in response.content
    assert not Contact.objects.exists()


def test_rate_limit_per_ip_per_minute(signup_form, django_capture_on_commit_callbacks):
    signup_form.double_opt_in = False
    signup_form.save()
    client = _client()
    codes = [
        _post(client, signup_form, django_capture_on_commit_callbacks, email=f"r{i}@x.org")
        for i in range(11)
    ]
    assert [r.status_code for r in codes[:10]] == [200] * 10
    assert codes[10].status_code == 429 and codes[10]["Retry-After"] == "60"
    assert Subscription.objects.count() == 10
    other_ip = Client(REMOTE_ADDR="198.51.100.1")
    with django_capture_on_commit_callbacks(execute=True):
        other = other_ip.post(f"/subscribe/{signup_form.public_token}/", {"email": "o@x.org"})
    assert other.status_code == 200


def _unconfirmed(signup_form) -> Subscription:
    return SubscriptionFactory(
        contact_list=signup_form.contact_list, status=SubscriptionStatus.UNCONFIRMED
    )


def test_expired_token_is_refused(signup_form, monkeypatch):
    subscription = _unconfirmed(signup_form)
    eight_days_ago = time.time() - 8 * 24 * 3600
    with monkeypatch.context() as patch:
        patch.setattr(signing.time, "time", lambda: eight_days_ago)
        token = confirm_token(subscription_id=subscription.pk, form_id=signup_form.pk)
    response = _client().post(f"/subscribe/confirm/{token}/")
    assert response.status_code == 404
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.UNCONFIRMED


def test_tampered_token_is_refused(signup_form):
    subscription = _unconfirmed(signup_form)
    other = _unconfirmed(signup_form)
    token = confirm_token(subscription_id=subscription.pk, form_id=signup_form.pk)
    payload, _, signature = token.partition(":")
    forged = signing.dumps([other.pk, signup_form.pk], salt="wrong")  # another key
    for bad in (token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), forged):
        assert _client().post(f"/subscribe/confirm/{bad}/").status_code == 404
    assert not Subscription.objects.filter(status=SubscriptionStatus.SUBSCRIBED).exists()


def test_old_link_cannot_undo_a_later_unsubscribe(signup_form):
    subscription = _unconfirmed(signup_form)
    token = confirm_token(subscription_id=subscription.pk, form_id=signup_form.pk)
    subscription.status = SubscriptionStatus.UNSUBSCRIBED
    subscription.save()
    assert _client().post(f"/subscribe/confirm/{token}/").status_code == 404
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.UNSUBSCRIBED


def test_disabled_or_unknown_form_is_404(signup_form):
    assert _client().get("/subscribe/nope/").status_code == 404
    signup_form.enabled = False
    signup_form.save()
    assert _client().get(f"/subscribe/{signup_form.public_token}/").status_code == 404


def test_embed_snippet_is_a_plain_form_with_the_honeypot(signup_form):
    html = signup_embed_html(signup_form)
    assert f'action="http://127.0.0.1:8000/subscribe/{signup_form.public_token}/"' in html
    assert 'method="post"' in html and 'name="website"' in html and 'name="city"' in html
    assert "<script" not in html


# --- admin ---------------------------------------------------------------------------------


@pytest.fixture
def admin_client(db, client, django_user_model):
    user = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(user)
    return client


def test_admin_shows_the_snippet_and_the_consent_history(
    signup_form, admin_client, smtp_settings, django_capture_on_commit_callbacks
):
    page = admin_client.get(f"/admin/contacts/signupform/{signup_form.pk}/change/")
    assert page.status_code == 200
    assert b"&lt;form action=" in page.content
    _post(_client(), signup_form, django_capture_on_commit_callbacks, email="c@example.org")
    contact = Contact.objects.get(email="c@example.org")
    contact_page = admin_client.get(f"/admin/contacts/contact/{contact.pk}/change/")
    assert contact_page.status_code == 200
    assert b"Consent history" in contact_page.content
    assert b"203.0.113.7" in contact_page.content
    assert admin_client.get("/admin/contacts/consentrecord/").status_code == 200


def test_admin_refuses_a_double_opt_in_body_without_the_link(signup_form, admin_client):
    response = admin_client.post(
        f"/admin/contacts/signupform/{signup_form.pk}/change/",
        {
            "title": signup_form.title,
            "contact_list": signup_form.contact_list_id,
            "enabled": "on",
            "public_token": signup_form.public_token,
            "attribute_fields": "[]",
            "double_opt_in": "on",
            "confirmation_subject": "Confirm",
            "confirmation_body": "<p>No link here</p>",
        },
    )
    assert response.status_code == 200
    assert b"confirm_url" in response.content
