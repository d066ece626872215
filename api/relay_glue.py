"""What the SMTP relay (api.relay) needs from the API app: key check and storage."""

from __future__ import annotations

from collections.abc import Sequence

from api import services
from api.errors import SenderNotAllowed
from api.models import ApiKey, Scope
from mailkit.errors import MessageRefused
from mailkit.headerblock import HeaderRefusal


def authenticate(password: str) -> ApiKey | None:
    """The key, when it is valid, not revoked and may send."""
    key = services.api_key_authenticate(password)
    if key is None or not key.has_scope(Scope.MESSAGES_SEND):
        return None
    return key


def accept(api_key: ApiKey, mail_from: str, rcpt_tos: Sequence[str], data: bytes) -> list[str]:
    """Store one message per recipient; MessageRefused (5xx, nothing stored) for an ambiguous
    header block or an originator domain the key may not use."""
    try:
        messages = services.messages_accept_raw(
            api_key=api_key, sender=mail_from, recipients=rcpt_tos, data=data
        )
    except HeaderRefusal as exc:
        # RFC 3463 5.6.0: the content is refused as written; a retry would be refused again.
        raise MessageRefused(f"550 5.6.0 Message refused: {_one_line(str(exc))}") from None
    except SenderNotAllowed as exc:
        # RFC 3463 5.7.1: delivery not authorized, message refused. Permanent: a retry with
        # the same From would be refused again.
        raise MessageRefused(f"550 5.7.1 {_one_line(str(exc))}") from None
    return [str(m.public_id) for m in messages]


def _one_line(text: str) -> str:
    # One line of ASCII: the text may quote an address the client wrote. SMTP replies stay
    # in English: they are protocol text read by client libraries and logs, not by people.
    return " ".join(text.split()).encode("ascii", "backslashreplace").decode()
