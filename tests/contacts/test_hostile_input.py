"""Hostile text from outside (issue 14, items 6 and 10): the public sign-up form, admin JSON
fields, segment rules and import files answer a form error or a rejected row for NUL bytes
and lone surrogates, never a server error, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from contacts.imports.csvparse import _check_fields
from contacts.models import Contact, SignupForm
from contacts.normalize import RejectReason
from mailkit.text import clean_json, clean_text, has_refused, refused_path
from tests.factories import ContactFactory, ContactListFactory

# --- the cleaning function -------------------------------------------------------------------


def test_clean_text_replaces_nul_and_every_lone_surrogate_and_nothing_else():
    assert clean_text("a\x00b\udcff\ud800c") == "a\ufffdb\ufffd\ufffdc"
    kept = "plain 中文 😀 \u202e\ufeff\uffff\x01\x7f\r\n"
    assert clean_text(kept) is kept
    assert not has_refused(kept)
    assert has_refused("\x00") and has_refused("\udfff")


def test_refused_path_and_clean_json_walk_keys_values_and_deep_nesting():
    value = {"ok": 1, "list": [{"x": "a\x00"}], "k\ud800": "v"}
    assert refused_path(value) in ("list.0.x", "k\ufffd")
    cleaned = clean_json(value)
    assert cleaned == {"ok": 1, "list": [{"x": "a\ufffd"}], "k\ufffd": "v"}
    assert refused_path(cleaned) is None
    clean = {"a": [1, "b"]}
    assert clean_json(clean) is clean
    deep: object = "\x00"
    for _ in range(50_000):  # far deeper than any stack
        deep = [deep]
    assert refused_path(deep) == ".".join(["0"] * 50_000)
    assert refused_path(clean_json(deep)) is None


# --- the public sign-up form -------------------------------------------------------------------


@pytest.fixture
def signup_form(db, redis_client):
    return SignupForm.objects.create(
        contact_list=ContactListFactory(name="Newsletter"),
        title="Join",
        consent_text="Weekly.",
        attribute_fields=[{"key": "city", "label": "City"}],
        from_email="hello@skylark.test",
        double_opt_in=False,
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"email": "a@example.org", "name": "Ann\x00"},
        {"email": "a@example.org", "city": "Par\x00is"},
        {"email": "a\x00@example.org"},
    ],
)
def test_signup_with_a_nul_byte_is_a_form_error_not_a_500(signup_form, fields):
    client = Client(raise_request_exception=False, REMOTE_ADDR="203.0.113.9")
    response = client.post(f"/subscribe/{signup_form.public_token}/", fields)
    assert response.status_code == 400
    assert b"not allowed" in response.content or b"valid email" in response.content
    assert not Contact.objects.exists()


def test_signup_stores_a_hostile_user_agent_cleaned(signup_form):
    client = Client(HTTP_USER_AGENT="bot\x00\ud800", REMOTE_ADDR="203.0.113.9")
    response = client.post(f"/subscribe/{signup_form.public_token}/", {"email": "b@example.org"})
    assert response.status_code in (200, 302)
    consent = Contact.objects.get(email="b@example.org").consent_records.get()
    assert consent.user_agent == "bot\ufffd\ufffd"


# --- the admin ---------------------------------------------------------------------------------


@pytest.fixture
def admin_client(db, client, django_user_model):
    user = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(user)
    client.raise_request_exception = False
    return client


@pytest.mark.parametrize(
    "attributes", ['{"city": "Par\\u0000is"}', '{"k\\u0000": 1}', '{"a": ["\\ud800"]}']
)
def test_admin_contact_attributes_with_nul_escapes_are_a_form_error(admin_client, attributes):
    contact = ContactFactory(email="c@example.org", name="C")
    response = admin_client.post(
        f"/admin/contacts/contact/{contact.pk}/change/",
        {
            "email": contact.email,
            "name": contact.name,
            "status": contact.status,
            "attributes": attributes,
            "subscriptions-TOTAL_FORMS": "0",
            "subscriptions-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 200, response.status_code
    assert b"cannot be stored" in response.content
    contact.refresh_from_db()
    assert contact.attributes == {}


def test_admin_signup_form_fields_with_a_nul_escape_are_a_form_error(admin_client, signup_form):
    response = admin_client.post(
        f"/admin/contacts/signupform/{signup_form.pk}/change/",
        {
            "title": signup_form.title,
            "contact_list": signup_form.contact_list_id,
            "enabled": "on",
            "public_token": signup_form.public_token,
            "attribute_fields": '[{"key": "ci\\u0000ty", "label": "City"}]',
            "confirmation_subject": "Confirm",
            "confirmation_body": "<p>{{ confirm_url }}</p>",
        },
    )
    assert response.status_code == 200, response.status_code
    assert b"cannot be stored" in response.content
    signup_form.refresh_from_db()
    assert signup_form.attribute_fields == [{"key": "city", "label": "City"}]


def test_segment_preview_with_a_nul_in_a_rule_is_a_400_not_a_500(admin_client):
    rule = {"field": "attributes.ci\x00ty", "op": "eq", "value": "Par\x00is"}
    response = admin_client.post(
        "/admin/contacts/segment/preview/",
        data=json.dumps({"match": "all", "rules": [rule]}),
        content_type="application/json",
    )
    assert response.status_code == 400, response.content
    assert "NUL" in json.dumps(response.json()["errors"])


# --- import files ------------------------------------------------------------------------------


def test_cells_with_nul_or_any_lone_surrogate_are_rejected_rows_whatever_the_reader():
    # CSV marks undecodable bytes itself; a workbook reader hands over the cells' text, which
    # may hold a surrogate of its own (an escape): the shared row check refuses both.
    assert _check_fields(["ok", "n\x00"], 1000)[0] == RejectReason.NUL_BYTE
    assert _check_fields(["ok", "caf\u00e9 \ud800"], 1000)[0] == RejectReason.UNDECODABLE
    assert _check_fields(["ok", "caf\u00e9 \U0001f600"], 1000) is None
