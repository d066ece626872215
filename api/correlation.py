"""Keys that tie a report back to a transactional message: its return path and "tx-<id>".

Pure (no database). The return path is a VERP address made by mailkit.verp with a secret of
its own, derived from SECRET_KEY: a campaign's return path never parses as a message's, nor
the other way round, though both are `bounces+...@EDM_BOUNCE_DOMAIN`. The "tx-<public id>"
key is the message's reference inside Skylark (BounceMessage.message_ref); what travels, as
the DSN ENVID (RFC 3461) and the X-Skylark-Delivery header of every message, is that key with
an HMAC tag (`signed_key`): a report can only name a message whose copy its author has seen.
No campaign delivery reference (digits) can be mistaken for it.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

from django.conf import settings

from delivery.tokens import purpose_secret
from mailkit.verp import keyed_reference, keyed_reference_parse, verp_address, verp_parse

KEY_PREFIX = "tx-"


def _verp_secret() -> str:
    return hmac.new(
        settings.SECRET_KEY.encode(), b"skylark-verp-transactional", hashlib.sha256
    ).hexdigest()


def return_path(message_pk: int) -> str:
    """The envelope sender of a message: `bounces+<id>-<tag>@EDM_BOUNCE_DOMAIN`."""
    return verp_address(
        delivery_id=message_pk, domain=settings.EDM_BOUNCE_DOMAIN, secret=_verp_secret()
    )


def message_pk_from_return_path(address: str) -> int | None:
    """The message id a return path was made for, None when it is not one of ours."""
    return verp_parse(address, secret=_verp_secret())


def correlation_key(public_id: uuid.UUID) -> str:
    return f"{KEY_PREFIX}{public_id}"


def public_id_from_key(key: str) -> uuid.UUID | None:
    """The public id in a "tx-<uuid>" key, None for anything else."""
    key = (key or "").strip().strip("<>").lower()
    if not key.startswith(KEY_PREFIX):
        return None
    text = key.removeprefix(KEY_PREFIX)
    try:
        public_id = uuid.UUID(text)
    except ValueError:
        return None
    return public_id if str(public_id) == text else None  # one spelling only


def signed_key(public_id: uuid.UUID) -> str:
    """`tx-<public id>.<tag>`: the ENVID and X-Skylark-Delivery value of a message."""
    return keyed_reference(correlation_key(public_id), secret=purpose_secret("tx-reference"))


def public_id_from_signed_key(value: str) -> uuid.UUID | None:
    """The public id a signed key names; None for an unsigned or tampered one."""
    key = keyed_reference_parse(value, secret=purpose_secret("tx-reference"))
    return public_id_from_key(key) if key is not None else None


def header_line(public_id: uuid.UUID) -> bytes:
    """The correlation header stamped on a message, like a campaign's delivery reference."""
    return f"X-Skylark-Delivery: {signed_key(public_id)}\r\n".encode("ascii")


UNSUBSCRIBE_MAILTO_PURPOSE = "unsubscribe-mailto-transactional"
