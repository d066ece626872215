"""Segment rules: every operator (on SQLite and PostgreSQL alike), validation, the admin preview."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.utils import timezone

from contacts.models import Contact, ContactStatus, Segment, SubscriptionStatus
from contacts.segments import SegmentRuleError, rules_validate, segment_contacts
from tests.factories import ContactFactory, ContactListFactory, SubscriptionFactory

TODAY = timezone.localdate()


def _iso(days_ago: int) -> str:
    return (TODAY - dt.timedelta(days=days_ago)).isoformat()


@pytest.fixture
def people(db):
    """Five contacts with a spread of attributes, names, statuses, lists and dates."""
    news = ContactListFactory(name="News")
    offers = ContactListFactory(name="Offers")
    ann = ContactFactory(
        email="ann@example.com",
        name="Ann Archer",
        attributes={"city": "Paris", "age": "34", "joined": "2023-05-01", "vip": True},
    )
    bob = ContactFactory(
        email="Bob@Sample.org",
        name="Bob",
        attributes={"city": "Berlin", "age": 19, "joined": _iso(3), "score": "n/a"},
    )
    cid = ContactFactory(
        email="cid@example.com",
        name="",
        attributes={"city": "paris", "age": "51.5", "joined": "2024-01-15T10:30:00"},
        status=ContactStatus.UNSUBSCRIBED,
    )
    dee = ContactFactory(email="dee@mail.example.net", name="Dee", attributes={"city": ""})
    eve = ContactFactory(email="eve@example.com", name="Eve", attributes={"age": "abc"})
    SubscriptionFactory(contact=ann, contact_list=news)
    SubscriptionFactory(contact=bob, contact_list=news, status=SubscriptionStatus.UNSUBSCRIBED)
    SubscriptionFactory(contact=cid, contact_list=offers, status=SubscriptionStatus.UNCONFIRMED)
    SubscriptionFactory(contact=dee, contact_list=offers)
    old = timezone.now() - dt.timedelta(days=40)
    Contact.objects.filter(pk=eve.pk).update(created_at=old)
    SubscriptionFactory(contact=eve, contact_list=news)
    eve.subscriptions.update(created_at=old)
    return {"news": news, "offers": offers}


def _names(rules, match="all") -> list[str]:
    emails = segment_contacts(rules=rules, match=match).values_list("email", flat=True)
    return sorted(email.split("@")[0].lower() for email in emails)


def _rule(field, op, value=None, **extra):
    return {"field": field, "op": op, "value": value, **extra}


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        # email: case-insensitive equality, case-insensitive contains/starts/ends
        (_rule("email", "eq", "BOB@sample.org"), ["bob"]),
        (_rule("email", "neq", "ann@example.com"), ["bob", "cid", "dee", "eve"]),
        (_rule("email", "contains", "EXAMPLE"), ["ann", "cid", "dee", "eve"]),
        (_rule("email", "not_contains", "example"), ["bob"]),
        (_rule("email", "starts_with", "de"), ["dee"]),
        (_rule("email", "ends_with", "@example.com"), ["ann", "cid", "eve"]),
        # name
        (_rule("name", "eq", "Bob"), ["bob"]),
        (_rule("name", "starts_with", "ann"), ["ann"]),
        (_rule("name", "is_set"), ["ann", "bob", "dee", "eve"]),
        (_rule("name", "is_not_set"), ["cid"]),
        # contact status
        (_rule("status", "eq", "unsubscribed"), ["cid"]),
        (_rule("status", "neq", "unsubscribed"), ["ann", "bob", "dee", "eve"]),
        # created_at
        (_rule("created_at", "before", _iso(30)), ["eve"]),
        (_rule("created_at", "after", _iso(30)), ["ann", "bob", "cid", "dee"]),
        (_rule("created_at", "within_days", 7), ["ann", "bob", "cid", "dee"]),
        # attribute text
        (_rule("attributes.city", "eq", "Paris"), ["ann"]),
        (_rule("attributes.city", "neq", "Paris"), ["bob", "cid", "dee", "eve"]),
        (_rule("attributes.city", "contains", "ari"), ["ann", "cid"]),
        (_rule("attributes.city", "not_contains", "ari"), ["bob", "dee", "eve"]),
        (_rule("attributes.city", "starts_with", "BER"), ["bob"]),
        (_rule("attributes.city", "ends_with", "is"), ["ann", "cid"]),
        (_rule("attributes.city", "is_set"), ["ann", "bob", "cid"]),
        (_rule("attributes.city", "is_not_set"), ["dee", "eve"]),
        (_rule("attributes.vip", "is_set"), ["ann"]),
        # a number typed as text equals the number stored as JSON, and the other way round
        (_rule("attributes.age", "eq", "19"), ["bob"]),
        (_rule("attributes.age", "eq", 34), ["ann"]),
        # attribute numbers: "34" and 19 are numbers, "abc" and "n/a" never match
        (_rule("attributes.age", "gt", 34), ["cid"]),
        (_rule("attributes.age", "gte", 34), ["ann", "cid"]),
        (_rule("attributes.age", "lt", 34), ["bob"]),
        (_rule("attributes.age", "lte", "34"), ["ann", "bob"]),
        (_rule("attributes.score", "gte", 0), []),
        # attribute dates, compared as ISO strings
        (_rule("attributes.joined", "before", "2024-01-15"), ["ann"]),
        (_rule("attributes.joined", "after", "2024-01-14"), ["bob", "cid"]),
        (_rule("attributes.joined", "after", "2024-01-15"), ["bob"]),
        (_rule("attributes.joined", "within_days", 7), ["bob"]),
        # list membership (subscribed by default, or another status, or any)
        (_rule("list", "in", "LIST:news"), ["ann", "eve"]),
        (_rule("list", "not_in", "LIST:news"), ["bob", "cid", "dee"]),
        (_rule("list", "in", "LIST:news", status="unsubscribed"), ["bob"]),
        (_rule("list", "in", "LIST:offers", status="any"), ["cid", "dee"]),
        (_rule("list", "in", "LIST:offers", status="unconfirmed"), ["cid"]),
        # subscription date
        (_rule("subscribed_at", "before", _iso(30)), ["eve"]),
        (_rule("subscribed_at", "within_days", 7, list="LIST:news"), ["ann"]),
        (_rule("subscribed_at", "within_days", 7), ["ann", "dee"]),
    ],
)
def test_each_operator_selects_the_expected_contacts(people, rule, expected):
    if isinstance(rule["value"], str) and rule["value"].startswith("LIST:"):
        rule = {**rule, "value": people[rule["value"][5:]].pk}
    if isinstance(rule.get("list"), str):
        rule = {**rule, "list": people[rule["list"][5:]].pk}
    assert _names([rule]) == expected


def test_match_all_intersects_and_match_any_unites(people):
    rules = [_rule("attributes.city", "contains", "paris"), _rule("name", "is_set")]
    assert _names(rules, "all") == ["ann"]
    assert _names(rules, "any") == ["ann", "bob", "cid", "dee", "eve"]


def test_validation_reports_every_problem_with_its_rule_number(db):
    rules = [
        {"field": "shoe_size", "op": "eq", "value": 1},
        {"field": "attributes.age", "op": "gt", "value": "old"},
        {"field": "email", "op": "before", "value": "2024-01-01"},
        {"field": "attributes.x", "op": "after", "value": "yesterday"},
        {"field": "list", "op": "in", "value": 999999},
        {"field": "attributes.x", "op": "within_days", "value": -1},
        "not a rule",
    ]
    with pytest.raises(SegmentRuleError) as caught:
        rules_validate(rules)
    errors = caught.value.errors
    assert len(errors) == 7
    assert errors[0].startswith("Rule 1: unknown field 'shoe_size'")
    assert "needs a number" in errors[1]
    assert "email cannot use 'before'" in errors[2]
    assert "YYYY-MM-DD" in errors[3]
    assert "no contact list with id 999999" in errors[4]
    assert "whole number of days" in errors[5]
    assert errors[6].startswith("Rule 7: must be an object")


@pytest.mark.parametrize("rules", [[], {"field": "email"}, None])
def test_rules_must_be_a_non_empty_list(db, rules):
    with pytest.raises(SegmentRuleError):
        rules_validate(rules)


def test_segment_model_clean_turns_rule_errors_into_a_field_error(db):
    from django.core.exceptions import ValidationError

    segment = Segment(name="Bad", rules=[{"field": "nope", "op": "eq", "value": 1}])
    with pytest.raises(ValidationError) as caught:
        segment.full_clean()
    assert "rules" in caught.value.message_dict


# --- admin: count preview ------------------------------------------------------------------


@pytest.fixture
def admin_client(db, client, django_user_model):
    user = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(user)
    return client


def _preview(client, payload):
    return client.post(
        "/admin/contacts/segment/preview/",
        data=json.dumps(payload),
        content_type="application/json",
    )


def test_preview_endpoint_counts_and_samples_matching_contacts(people, admin_client):
    response = _preview(
        admin_client,
        {"match": "all", "rules": [_rule("attributes.city", "contains", "paris")]},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert body["active"] == 1  # cid unsubscribed
    assert sorted(row["email"] for row in body["sample"]) == ["ann@example.com", "cid@example.com"]
    assert body["errors"] == []


def test_preview_endpoint_returns_rule_errors_not_a_500(people, admin_client):
    response = _preview(admin_client, {"match": "all", "rules": [_rule("attributes.a", "gt", "x")]})
    assert response.status_code == 400
    assert "needs a number" in response.json()["errors"][0]


def test_preview_endpoint_needs_staff(people, client):
    response = _preview(client, {"match": "all", "rules": [_rule("name", "is_set")]})
    assert response.status_code in (302, 403)


def test_segment_editor_page_renders(people, admin_client):
    response = admin_client.get("/admin/contacts/segment/add/")
    assert response.status_code == 200
    assert b"segment-preview" in response.content


def test_segment_editor_offers_field_labels_and_known_attribute_names(people, admin_client):
    response = admin_client.get("/admin/contacts/segment/add/")
    editor = response.context["segment_editor"]
    assert editor["field_labels"]["created_at"] == "Date added"
    assert {"city", "age", "joined"} <= set(editor["attribute_keys"])
    html = response.content.decode()
    assert '<datalist id="segment-attribute-names">' in html
    assert '<option value="city">' in html
    assert "docs/contacts.md" not in html  # a marketer is not sent to read the docs


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (_rule("attributes.会员等级", "eq", "金卡"), ["gold"]),
        (_rule("attributes.会员等级", "contains", "卡"), ["gold", "silver"]),
        (_rule("attributes.城市", "is_set"), ["gold"]),
        (_rule("attributes.城市", "is_not_set"), ["silver"]),
    ],
)
def test_attribute_names_in_chinese_as_imports_keep_them(db, rule, expected):
    # A file with the header 会员等级 becomes that attribute (csvparse.attribute_key).
    ContactFactory(email="gold@example.com", attributes={"会员等级": "金卡", "城市": "杭州"})
    ContactFactory(email="silver@example.com", attributes={"会员等级": "银卡"})
    assert _names([rule]) == expected


def test_description_names_lists_and_reads_as_a_sentence(db):
    newsletter = ContactListFactory(name="Newsletter")
    rules = rules_validate(
        [
            {"field": "list", "op": "in", "value": newsletter.pk},
            {"field": "subscribed_at", "op": "within_days", "value": 30},
            {"field": "attributes.city", "op": "eq", "value": "Paris"},
            {"field": "name", "op": "is_set"},
        ]
    )
    from contacts.segments import rules_describe

    assert rules_describe(rules) == (
        "is in list Newsletter and subscribed_at within the last 30 days"
        " and city equals Paris and name is set"
    )


def test_validation_errors_are_in_the_active_language(db):
    from django.utils import translation

    rules = [
        {"field": "shoe_size", "op": "eq", "value": 1},
        {"field": "attributes.x", "op": "within_days", "value": float("inf")},
    ]
    with translation.override("zh-hans"), pytest.raises(SegmentRuleError) as caught:
        rules_validate(rules)
    assert caught.value.errors[0].startswith("规则 1：未知字段 'shoe_size'")
    assert caught.value.errors[1] == "规则 2：within_days 需要一个整数天数（0-36600）。"


def test_description_is_in_the_active_language(db):
    from django.utils import translation

    from contacts.segments import rules_describe

    rules = rules_validate(
        [
            {"field": "email", "op": "ends_with", "value": "@qq.com"},
            {"field": "name", "op": "is_set"},
        ]
    )
    with translation.override("zh-hans"):
        assert rules_describe(rules) == "email 结尾是 @qq.com 且 name 已设置"
