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


def signed_token(*, delivery_id: int, secret: str) -> str:
    """`<id>-<tag>` in base32: the id and its HMAC tag, as a VERP local part carries them."""
    if delivery_id < 0:
        raise ValueError("delivery_id must be a non-negative integer")
    if not secret:
        raise ValueError("a VERP secret is required")
    return f"{_b32(_id_bytes(delivery_id))}{_SEPARATOR}{_b32(_tag(delivery_id, secret))}"


def verp_address(*, delivery_id: int, domain: str, secret: str, prefix: str = VERP_PREFIX) -> str:
    """Return `bounces+<id>-<tag>@<domain>` for a delivery (another `prefix` for another
    purpose, e.g. the List-Unsubscribe mailto, always with a secret of that purpose)."""
    token = signed_token(delivery_id=delivery_id, secret=secret)
    return f"{prefix}+{token}@{domain.strip().lower()}"


def verp_parse(
    address: str, *, secret: str, domain: str | None = None, prefix: str = VERP_PREFIX
) -> int | None:
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
    local_prefix, plus, token = local.partition("+")
    if not plus or local_prefix.lower() != prefix:
        return None
    return signed_token_parse(token, secret=secret)


def signed_token_parse(token: str, *, secret: str) -> int | None:
    """The delivery id of a `signed_token`, None when it is not one or its tag is wrong."""
    if not secret or not token or len(token) > 40:
        return None
    encoded_id, sep, encoded_tag = token.strip().lower().partition(_SEPARATOR)
    if not sep or not encoded_id or not encoded_tag or len(encoded_id) > 26:  # <= 128 bits
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


# --- keyed references: the DSN ENVID, the X-Skylark-Delivery header, Message-IDs -------------
# Anyone can write these fields into a report, so each carries an HMAC tag of the key it names
# (80 bits): a report can only name a message whose reference its author has seen.
REFERENCE_TAG_CHARS = 16  # base32 of 10 bytes
_REFERENCE_SEPARATOR = "."


def _reference_tag(key: str, secret: str) -> str:
    digest = hmac.new(secret.encode("utf-8"), b"skylark-ref:" + key.encode("ascii"), "sha256")
    return _b32(digest.digest()[:10])


def keyed_reference(key: str, *, secret: str) -> str:
    """`<key>.<tag>`: a key (a delivery id, "tx-<uuid>") with its HMAC tag; ASCII, no spaces."""
    if not secret:
        raise ValueError("a reference secret is required")
    if not key.isascii() or not key or any(c.isspace() or c in "<>@" for c in key):
        raise ValueError("a reference key is printable ASCII without spaces")
    return f"{key}{_REFERENCE_SEPARATOR}{_reference_tag(key, secret)}"


def keyed_reference_parse(value: str, *, secret: str) -> str | None:
    """The key of a reference `keyed_reference` made, None when unsigned or tampered with."""
    value = (value or "").strip().strip("<>").strip().lower()
    if not secret or not value or len(value) > 120 or not value.isascii():
        return None
    key, sep, tag = value.rpartition(_REFERENCE_SEPARATOR)
    if not sep or not key or len(tag) != REFERENCE_TAG_CHARS:
        return None
    if not hmac.compare_digest(tag, _reference_tag(key, secret)):
        return None
    return key
