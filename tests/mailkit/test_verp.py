"""VERP return path helpers: roundtrip, tampering, case folding, foreign addresses."""

import pytest

from mailkit.verp import verp_address, verp_parse

SECRET = "test-secret-not-for-production"


@pytest.mark.parametrize("delivery_id", [0, 1, 35, 36, 1_000_000, 2**40 + 17, 2**63 - 1])
def test_verp_roundtrip_returns_the_delivery_id(delivery_id):
    address = verp_address(delivery_id=delivery_id, domain="bounce.example.com", secret=SECRET)
    assert address.startswith("bounces+")
    assert address.endswith("@bounce.example.com")
    assert verp_parse(address, secret=SECRET) == delivery_id


def test_verp_local_part_is_short_and_lowercase():
    address = verp_address(delivery_id=123456789, domain="Bounce.Example.com", secret=SECRET)
    local = address.split("@")[0]
    assert local == local.lower()
    assert len(local) <= 64  # RFC 5321 local-part limit
    assert address.endswith("@bounce.example.com")


def test_verp_survives_case_folding_by_mail_systems():
    address = verp_address(delivery_id=424242, domain="bounce.example.com", secret=SECRET)
    assert verp_parse(address.upper(), secret=SECRET) == 424242
    assert verp_parse(address.title(), secret=SECRET) == 424242
    assert verp_parse(f"<{address}>", secret=SECRET) == 424242


def test_verp_rejects_a_tampered_id_or_tag():
    address = verp_address(delivery_id=1000, domain="bounce.example.com", secret=SECRET)
    local, domain = address.split("@")
    encoded_id, tag = local.removeprefix("bounces+").split("-")
    other_id = verp_address(delivery_id=1001, domain=domain, secret=SECRET)
    other_encoded_id = other_id.split("@")[0].removeprefix("bounces+").split("-")[0]
    assert verp_parse(f"bounces+{other_encoded_id}-{tag}@{domain}", secret=SECRET) is None
    flipped = ("a" if tag[0] != "a" else "b") + tag[1:]
    assert verp_parse(f"bounces+{encoded_id}-{flipped}@{domain}", secret=SECRET) is None
    assert verp_parse(f"bounces+{encoded_id}-{tag[:-1]}@{domain}", secret=SECRET) is None
    assert verp_parse(f"bounces+{encoded_id}@{domain}", secret=SECRET) is None


def test_verp_rejects_another_secret():
    address = verp_address(delivery_id=7, domain="bounce.example.com", secret=SECRET)
    assert verp_parse(address, secret="another-secret") is None
    assert verp_parse(address, secret="") is None


def test_verp_rejects_wrong_prefix_or_domain():
    address = verp_address(delivery_id=7, domain="bounce.example.com", secret=SECRET)
    token = address.split("+", 1)[1]
    assert verp_parse("bounce+" + token, secret=SECRET) is None
    assert verp_parse("other+" + token, secret=SECRET) is None
    assert verp_parse(address, secret=SECRET, domain="bounce.example.com") == 7
    assert verp_parse(address, secret=SECRET, domain="BOUNCE.example.com") == 7
    assert verp_parse(address, secret=SECRET, domain="evil.example.net") is None


@pytest.mark.parametrize(
    "address",
    [
        "",
        "bounces",
        "bounces@example.com",
        "bounces+@example.com",
        "bounces+!!-!!@example.com",
        "user@example.com",
        "@example.com",
        "bounces+aaaa-bbbb",
        "bounces+0000000000000000000-aa@x.y",
    ],
)
def test_verp_parse_returns_none_for_garbage(address):
    assert verp_parse(address, secret=SECRET) is None


def test_verp_address_refuses_negative_ids_and_empty_secrets():
    with pytest.raises(ValueError):
        verp_address(delivery_id=-1, domain="bounce.example.com", secret=SECRET)
    with pytest.raises(ValueError):
        verp_address(delivery_id=1, domain="bounce.example.com", secret="")
