"""What the SMTP relay (delivery.relay) needs from the API app: key check and storage."""

from __future__ import annotations

from collections.abc import Sequence

from api import services
from api.models import ApiKey, Scope


def authenticate(password: str) -> ApiKey | None:
    """The key, when it is valid, not revoked and may send."""
    key = services.api_key_authenticate(password)
    if key is None or not key.has_scope(Scope.MESSAGES_SEND):
        return None
    return key


def accept(api_key: ApiKey, mail_from: str, rcpt_tos: Sequence[str], data: bytes) -> list[str]:
    messages = services.messages_accept_raw(
        api_key=api_key, sender=mail_from, recipients=rcpt_tos, data=data
    )
    return [str(m.public_id) for m in messages]
