"""The keys of transactional messages: their return path and "tx-<public id>" (pure)."""

from __future__ import annotations

import uuid

from django.conf import settings

from api import correlation
from mailkit.verp import verp_address, verp_parse


def test_return_path_round_trips_in_any_case():
    address = correlation.return_path(42)
    assert address.startswith("bounces+") and address.endswith("@" + settings.EDM_BOUNCE_DOMAIN)
    assert correlation.message_pk_from_return_path(address) == 42
    assert correlation.message_pk_from_return_path(address.upper()) == 42


def test_campaign_and_message_return_paths_never_cross():
    campaign = verp_address(
        delivery_id=42, domain=settings.EDM_BOUNCE_DOMAIN, secret=settings.SECRET_KEY
    )
    message = correlation.return_path(42)
    assert campaign != message
    assert correlation.message_pk_from_return_path(campaign) is None
    assert verp_parse(message, secret=settings.SECRET_KEY) is None


def test_a_tampered_return_path_is_not_ours():
    local, _, domain = correlation.return_path(42).partition("@")
    tampered = local[:-1] + ("a" if local[-1] != "a" else "b") + "@" + domain
    assert correlation.message_pk_from_return_path(tampered) is None
    assert correlation.message_pk_from_return_path("bounces@" + domain) is None


def test_keys_have_one_spelling_in_any_case():
    public_id = uuid.uuid4()
    key = correlation.correlation_key(public_id)
    assert key == f"tx-{public_id}"
    assert correlation.public_id_from_key(key) == public_id
    assert correlation.public_id_from_key(f" <{key.upper()}> ") == public_id
    for other in ("42", "", f"tx-{public_id.hex}", f"tx-{{{public_id}}}", f"x-{public_id}"):
        assert correlation.public_id_from_key(other) is None
    signed = correlation.signed_key(public_id)
    assert signed.startswith(f"{key}.")
    assert correlation.header_line(public_id) == f"X-Skylark-Delivery: {signed}\r\n".encode()
    assert correlation.public_id_from_signed_key(f" <{signed.upper()}> ") == public_id
    # The bare key, a tag of another message's and an altered tag are refused.
    other = correlation.signed_key(uuid.uuid4())
    for forged in (key, f"{key}.{other.rpartition('.')[2]}", signed[:-1] + "a", signed + "a"):
        if forged != signed:
            assert correlation.public_id_from_signed_key(forged) is None
