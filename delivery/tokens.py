"""Signed tokens for public URLs (unsubscribe, tracking, web view), one salt per purpose, and
the keyed references a message carries (ENVID, X-Skylark-Delivery, Message-ID, the
List-Unsubscribe mailto), each with a secret of its own purpose derived from SECRET_KEY."""

from __future__ import annotations

import hashlib
import hmac

from django.conf import settings
from django.core import signing

from mailkit.verp import (
    keyed_reference,
    keyed_reference_parse,
    signed_token_parse,
    verp_address,
    verp_parse,
)

_SIGNERS: dict[str, signing.Signer] = {}
_SECRETS: dict[tuple[str, str], str] = {}

# The local part of the List-Unsubscribe mailto address: `unsubscribe+<id>-<tag>@<domain>`.
UNSUBSCRIBE_MAILTO_PREFIX = "unsubscribe"


def _signer(purpose: str) -> signing.Signer:
    signer = _SIGNERS.get(purpose)
    if signer is None:
        signer = _SIGNERS[purpose] = signing.Signer(salt=f"skylark.{purpose}")
    return signer


def make_token(purpose: str, delivery_id: int) -> str:
    return _signer(purpose).sign(str(delivery_id))


def read_token(purpose: str, token: str) -> int | None:
    """The delivery id of a valid token of this purpose, or None (forged, tampered, other purpose)."""
    try:
        return int(_signer(purpose).unsign(token))
    except (signing.BadSignature, ValueError):
        return None


def unsubscribe_url(delivery_id: int) -> str:
    return f"{settings.EDM_PUBLIC_URL}/u/{make_token('unsubscribe', delivery_id)}/"


def purpose_secret(purpose: str) -> str:
    """A secret for one purpose, derived from SECRET_KEY: a tag made for one purpose never
    verifies for another."""
    cache_key = (settings.SECRET_KEY, purpose)
    secret = _SECRETS.get(cache_key)
    if secret is None:
        secret = hmac.new(
            settings.SECRET_KEY.encode(), f"skylark.{purpose}".encode(), hashlib.sha256
        ).hexdigest()
        _SECRETS[cache_key] = secret
    return secret


def delivery_reference(delivery_id: int) -> str:
    """The ENVID and X-Skylark-Delivery value of a delivery: `<id>.<tag>`."""
    return keyed_reference(str(int(delivery_id)), secret=purpose_secret("delivery-reference"))


def delivery_header_line(delivery_id: int) -> bytes:
    """The `X-Skylark-Delivery: <id>.<tag>` line a message stored without it is sent with."""
    return f"X-Skylark-Delivery: {delivery_reference(delivery_id)}\r\n".encode("ascii")


def delivery_return_path(delivery_id: int) -> str:
    """The VERP envelope sender of a delivery: `bounces+<id>-<tag>@EDM_BOUNCE_DOMAIN`."""
    return verp_address(
        delivery_id=delivery_id, domain=settings.EDM_BOUNCE_DOMAIN, secret=settings.SECRET_KEY
    )


def delivery_from_reference(value: str) -> int | None:
    """The delivery id a signed reference names; None for a bare id or a wrong tag."""
    key = keyed_reference_parse(value, secret=purpose_secret("delivery-reference"))
    return int(key) if key is not None and key.isdigit() and len(key) <= 18 else None


def message_id_secret() -> str:
    """The secret of Message-IDs' unguessable part (mailkit.compose.make_message_id)."""
    return purpose_secret("message-id")


def unsubscribe_mailto(*, delivery_id: int, purpose: str = "unsubscribe-mailto") -> str:
    """The List-Unsubscribe mailto URI: the signed token in the address and in the subject.

    RFC 2369: a mail to it unsubscribes. The address is the bounce domain's (mail there
    reaches the intake); the subject carries the same token for mailboxes that drop the
    `+` part of an address.
    """
    address = verp_address(
        delivery_id=delivery_id,
        domain=settings.EDM_BOUNCE_DOMAIN,
        secret=purpose_secret(purpose),
        prefix=UNSUBSCRIBE_MAILTO_PREFIX,
    )
    token = address.partition("+")[2].partition("@")[0]
    return f"mailto:{address}?subject=unsubscribe%20{token}"


def unsubscribe_mailto_parse(address: str, *, purpose: str = "unsubscribe-mailto") -> int | None:
    """The id an unsubscribe address was made for, None when forged or altered."""
    return verp_parse(address, secret=purpose_secret(purpose), prefix=UNSUBSCRIBE_MAILTO_PREFIX)


def unsubscribe_token_parse(token: str, *, purpose: str = "unsubscribe-mailto") -> int | None:
    """The id of the `<id>-<tag>` token of an unsubscribe address or subject, else None."""
    return signed_token_parse(token, secret=purpose_secret(purpose))
