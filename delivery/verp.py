"""VERP return paths: `bounces+<token>@<domain>` tying an asynchronous bounce to its delivery.

The token is base32 (RFC 4648 alphabet, lowercase, no padding) of the delivery id followed by
a truncated HMAC-SHA256 tag. Base32 is case-insensitive, so a mail system that lowercases or
uppercases local parts does not break it. Pure: the secret is passed in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

VERP_PREFIX = "bounces"
TAG_BYTES = 5  # 40 bits: 8 base32 characters; forging one needs ~2**40 tries per delivery id
_SEPARATOR = "-"


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def _unb32(text: str) -> bytes:
    text = text.upper()
    return base64.b32decode(text + "=" * (-len(text) % 8))


def _tag(delivery_id: int, secret: str) -> bytes:
    message = b"skylark-verp:" + str(delivery_id).encode("ascii")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()[:TAG_BYTES]


def _id_bytes(delivery_id: int) -> bytes:
    return delivery_id.to_bytes(max(1, (delivery_id.bit_length() + 7) // 8), "big")


def verp_address(*, delivery_id: int, domain: str, secret: str) -> str:
    """Return `bounces+<id>-<tag>@<domain>` for a delivery."""
    if delivery_id < 0:
        raise ValueError("delivery_id must be a non-negative integer")
    if not secret:
        raise ValueError("a VERP secret is required")
    token = f"{_b32(_id_bytes(delivery_id))}{_SEPARATOR}{_b32(_tag(delivery_id, secret))}"
    return f"{VERP_PREFIX}+{token}@{domain.strip().lower()}"


def verp_parse(address: str, *, secret: str, domain: str | None = None) -> int | None:
    """Return the delivery id of a VERP address we made, None when not ours or tampered with.

    With `domain`, an address at another domain is refused too.
    """
    if not secret or not address:
        return None
    address = address.strip().strip("<>").strip()
    local, at, address_domain = address.rpartition("@")
    if not at or not local:
        return None
    if domain is not None and address_domain.lower() != domain.strip().lower():
        return None
    prefix, plus, token = local.partition("+")
    if not plus or prefix.lower() != VERP_PREFIX:
        return None
    encoded_id, sep, encoded_tag = token.lower().partition(_SEPARATOR)
    if not sep or not encoded_id or not encoded_tag or len(encoded_id) > 16:
        return None
    try:
        id_bytes = _unb32(encoded_id)
        tag = _unb32(encoded_tag)
    except ValueError:
        return None
    if not id_bytes or (len(id_bytes) > 1 and id_bytes[0] == 0):
        return None  # one id, one spelling
    delivery_id = int.from_bytes(id_bytes, "big")
    if _b32(_id_bytes(delivery_id)) != encoded_id or _b32(tag) != encoded_tag:
        return None
    if not hmac.compare_digest(tag, _tag(delivery_id, secret)):
        return None
    return delivery_id
