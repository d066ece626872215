"""Keys of transactional messages accepted before they were deliveries (api migration 0006).

Their copies went out with keys of their own, and reports about them may still arrive: the
return path `bounces+<message id>-<tag>` (a VERP secret of its own), `tx-<public id>.<tag>` as
ENVID and X-Skylark-Delivery, and a List-Unsubscribe mailto token of the public id. Each is
checked by its tag exactly as before, then looked up in DeliveryAlias, which the migration
filled. New messages carry delivery keys only; this module can go once no report about a
message older than the upgrade can come (a few weeks of bounce and complaint delays).
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

from django.conf import settings

from delivery.models import DeliveryAlias
from delivery.tokens import purpose_secret, unsubscribe_token_parse
from mailkit.verp import keyed_reference_parse, verp_parse

_KEY_PREFIX = "tx-"


def _verp_secret() -> str:
    return hmac.new(
        settings.SECRET_KEY.encode(), b"skylark-verp-transactional", hashlib.sha256
    ).hexdigest()


def _public_key(text: str) -> str | None:
    """ "tx-<uuid>" in its one spelling, else None."""
    text = (text or "").strip().strip("<>").lower()
    if not text.startswith(_KEY_PREFIX):
        return None
    try:
        public_id = uuid.UUID(text.removeprefix(_KEY_PREFIX))
    except ValueError:
        return None
    key = f"{_KEY_PREFIX}{public_id}"
    return key if key == text else None


def _aliased(key: str | None) -> int | None:
    if key is None:
        return None
    return DeliveryAlias.objects.filter(key=key).values_list("delivery_id", flat=True).first()


def legacy_delivery_by_return_path(address: str) -> int | None:
    """The delivery of an old transactional message's return path, or None."""
    message_pk = verp_parse(address, secret=_verp_secret())
    return _aliased(f"txpk-{message_pk}" if message_pk is not None else None)


def legacy_delivery_by_reference(value: str) -> int | None:
    """The delivery a signed "tx-<public id>.<tag>" ENVID or header names, or None."""
    key = keyed_reference_parse(value, secret=purpose_secret("tx-reference"))
    return _aliased(_public_key(key) if key is not None else None)


def legacy_delivery_by_unsubscribe_token(token: str) -> int | None:
    """The delivery of an old marketing message's unsubscribe mailto token, or None."""
    value = unsubscribe_token_parse(token, purpose="unsubscribe-mailto-transactional")
    if value is None or value >= 1 << 128:
        return None
    return _aliased(f"{_KEY_PREFIX}{uuid.UUID(int=value)}")
