"""What the SMTP relay (delivery.relay) needs from the API app: key check and storage."""

from __future__ import annotations

from collections.abc import Sequence

from api import services
from api.errors import SenderNotAllowed
from api.models import ApiKey, Scope
from delivery.errors import MessageRefused


def authenticate(password: str) -> ApiKey | None:
    """The key, when it is valid, not revoked and may send."""
    key = services.api_key_authenticate(password)
    if key is None or not key.has_scope(Scope.MESSAGES_SEND):
        return None
    return key


def accept(api_key: ApiKey, mail_from: str, rcpt_tos: Sequence[str], data: bytes) -> list[str]:
    """Store one message per recipient; MessageRefused (5xx, nothing stored) for a From
    domain the key may not use."""
    try:
        messages = services.messages_accept_raw(
            api_key=api_key, sender=mail_from, recipients=rcpt_tos, data=data
        )
    except SenderNotAllowed as exc:
        # RFC 3463 5.7.1: delivery not authorized, message refused. Permanent: a retry with
        # the same From would be refused again.
        # One line of ASCII: the text quotes an address the client wrote.
        text = " ".join(str(exc).split()).encode("ascii", "backslashreplace").decode()
        raise MessageRefused(f"550 5.7.1 {text}") from None
    return [str(m.public_id) for m in messages]
