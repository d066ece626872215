"""List-Unsubscribe by mail (RFC 2369 `mailto:`): find a signed request in inbound mail.

Every message advertises `mailto:unsubscribe+<id>-<tag>@<bounce domain>?subject=unsubscribe
<id>-<tag>` (delivery.tokens.unsubscribe_mailto). Mail sent there reaches the bounce intake by
any of its paths (bounce server, MTA pipe, mailbox poller); `mailto_find` reads the request
from the envelope recipients, the top-level address headers and the Subject, never from a
body (a bounce quotes the original message, List-Unsubscribe header included). The token names
a delivery (a campaign's or a transactional message's) with an HMAC tag: a forged or altered
one unsubscribes nobody. What unsubscribing a delivery's recipient means (the campaign's
lists, or all marketing mail) is the campaigns app's `delivery_unsubscribe`, installed here
by CampaignsConfig.ready (`unsubscriber_install`): this app cannot import it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from typing import Protocol

from delivery.intake.legacy import legacy_delivery_by_unsubscribe_token
from delivery.models import Delivery
from delivery.tokens import UNSUBSCRIBE_MAILTO_PREFIX, unsubscribe_token_parse

# The headers that carry the address a mail was sent to, as MTAs and mailbox providers write
# them (a mailbox poller has no envelope).
_ADDRESS_HEADERS = ("to", "cc", "delivered-to", "x-original-to", "envelope-to", "x-envelope-to")
_HEADER_BYTES = 64 * 1024  # the top-level header block; the rest of a mail is not read
_TOKEN = r"[a-z2-7]{1,26}-[a-z2-7]{8}"
_SUBJECT_TOKEN = re.compile(rf"(?i)\bunsubscribe[\s+:_-]+({_TOKEN})\b")
_LOCAL_TOKEN = re.compile(rf"(?i)^{UNSUBSCRIBE_MAILTO_PREFIX}\+({_TOKEN})$")


@dataclass(frozen=True)
class MailtoRequest:
    """A mail to the unsubscribe address: the tokens it carries (maybe none, maybe forged)."""

    tokens: tuple[str, ...]


@dataclass(frozen=True)
class Unsubscribed:
    """What a valid token did."""

    delivery_id: int  # the delivery it was made for
    email: str  # the address the message was sent to
    contact_id: int | None
    changed: bool  # False when the person had already left


class Unsubscriber(Protocol):
    """Unsubscribe a delivery's recipient; True when something changed (idempotent)."""

    def __call__(self, *, delivery_id: int, source: str) -> bool: ...


_unsubscriber: list[Unsubscriber] = []


def unsubscriber_install(unsubscriber: Unsubscriber) -> None:
    """Set what a valid unsubscribe mail does (CampaignsConfig.ready; one, the last wins)."""
    _unsubscriber[:] = [unsubscriber]


def _local_part(address: str) -> str:
    return address.strip().strip("<>").rpartition("@")[0].strip()


def _decoded(value: str) -> str:
    """A header's text with RFC 2047 encoded words decoded (as is when they are broken)."""
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


def mailto_find(*, raw: bytes, envelope_rcpts: Sequence[str] = ()) -> MailtoRequest | None:
    """The unsubscribe request in a mail, or None when it is not addressed to unsubscribe."""
    end = raw.find(b"\r\n\r\n", 0, _HEADER_BYTES)
    if end < 0:
        end = raw.find(b"\n\n", 0, _HEADER_BYTES)
    head = raw[: end if end >= 0 else _HEADER_BYTES]
    headers = BytesHeaderParser(policy=compat32).parsebytes(head)
    addresses = list(envelope_rcpts)
    for name in _ADDRESS_HEADERS:
        values = [str(v) for v in headers.get_all(name) or ()][:20]
        addresses += [address for _, address in getaddresses(values) if address][:50]
    tokens: list[str] = []
    addressed = False
    for address in addresses:
        local = _local_part(address).lower()
        if local == UNSUBSCRIBE_MAILTO_PREFIX or local.startswith(UNSUBSCRIBE_MAILTO_PREFIX + "+"):
            addressed = True
        match = _LOCAL_TOKEN.match(local)
        if match:
            tokens.append(match.group(1).lower())
    subject = _decoded(str(headers.get("subject", ""))[:998])
    match = _SUBJECT_TOKEN.search(subject)
    if match:
        tokens.append(match.group(1).lower())
    if not addressed and not tokens:
        return None
    return MailtoRequest(tokens=tuple(dict.fromkeys(tokens)))


def mailto_apply(request: MailtoRequest, *, source: str) -> Unsubscribed | None:
    """Unsubscribe the recipient of the first token that names a delivery; None when none
    does (forged, altered, or its delivery is gone)."""
    for token in request.tokens:
        delivery_id = unsubscribe_token_parse(token)
        if delivery_id is None:
            delivery_id = legacy_delivery_by_unsubscribe_token(token)
        delivery = (
            Delivery.objects.filter(pk=delivery_id).only("email", "contact_id").first()
            if delivery_id is not None
            else None
        )
        if delivery is None or not _unsubscriber:
            continue
        changed = _unsubscriber[0](delivery_id=delivery.pk, source=source)
        return Unsubscribed(
            delivery_id=delivery.pk,
            email=delivery.email,
            contact_id=delivery.contact_id,
            changed=changed,
        )
    return None
