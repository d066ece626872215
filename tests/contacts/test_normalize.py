"""Email normalization: pure, no database."""

from __future__ import annotations

import pytest

from contacts.normalize import (
    EmailPolicy,
    InvalidEmail,
    RejectReason,
    is_disposable_domain,
    normalize_email,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  John.Doe@Example.COM ", "John.Doe@example.com"),
        ("mailto:a@b.example.org", "a@b.example.org"),
        ("<a@b.example.org>", "a@b.example.org"),
        ("<mailto:a@b.example.org>", "a@b.example.org"),
        ("x@BÜCHER.de", "x@bücher.de"),
        ("x@xn--bcher-kva.de", "x@bücher.de"),
        ("用户@例子.中国", "用户@例子.中国"),
        ("o'brien+tag@example.com", "o'brien+tag@example.com"),
    ],
)
def test_normalize_email_trims_strips_and_lowercases_only_the_domain(raw, expected):
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "plainaddress",
        "a@@b.com",
        "a@b",
        "a..b@example.com",
        ".a@example.com",
        "a@localhost",
        "a@example.test",
        "a b@example.com",
        "x" * 65 + "@example.com",
        "a@-example.com",
    ],
)
def test_normalize_email_rejects_invalid_addresses(raw):
    with pytest.raises(InvalidEmail) as info:
        normalize_email(raw)
    assert info.value.reason == RejectReason.INVALID_EMAIL


def test_normalize_email_reports_missing_email():
    with pytest.raises(InvalidEmail) as info:
        normalize_email("   ")
    assert info.value.reason == RejectReason.MISSING_EMAIL


def test_role_and_disposable_addresses_rejected_only_when_asked():
    policy = EmailPolicy(reject_role=True, reject_disposable=True)
    assert normalize_email("info@example.com") == "info@example.com"
    with pytest.raises(InvalidEmail) as role:
        normalize_email("NoReply@example.com", policy=policy)
    assert role.value.reason == RejectReason.ROLE_ADDRESS
    with pytest.raises(InvalidEmail) as disposable:
        normalize_email("someone@mailinator.com", policy=policy)
    assert disposable.value.reason == RejectReason.DISPOSABLE_DOMAIN
    assert is_disposable_domain("eu.yopmail.com")
    assert not is_disposable_domain("example.com")
