"""List-Unsubscribe by mail (RFC 2369 `mailto:`): find a signed request in inbound mail.

Every message advertises `mailto:unsubscribe+<id>-<tag>@<bounce domain>?subject=unsubscribe
<id>-<tag>` (delivery.tokens.unsubscribe_mailto). Mail sent there reaches the bounce intake by
any of its paths (bounce server, MTA pipe, mailbox poller); `mailto_find` reads the request
from the envelope recipients, the top-level address headers and the Subject, never from a
body (a bounce quotes the original message, List-Unsubscribe header included). The token is
checked by the app that made it (a registered `UnsubscribeHandler`): a forged or altered one
unsubscribes nobody. Pure but for the handlers: no database access here.
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

from delivery.tokens import UNSUBSCRIBE_MAILTO_PREFIX

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
    """What a handler did with a valid token."""

    delivery_id: int | None  # the campaign delivery it was made for, if one
    message_ref: str  # or the other message's correlation key ("tx-<id>")
    email: str  # the address the message was sent to
    contact_id: int | None
    changed: bool  # False when the person had already left


class UnsubscribeHandler(Protocol):
    """An app whose messages carry unsubscribe mailto tokens (campaigns, the API)."""

    def unsubscribe(self, token: str, *, source: str) -> Unsubscribed | None:
        """Unsubscribe the recipient a token of this app names; None when the token is
        not this app's or its tag is wrong (nothing changed)."""
        ...


_HANDLERS: dict[str, UnsubscribeHandler] = {}


def unsubscribe_handler_register(*, name: str, handler: UnsubscribeHandler) -> None:
    """Let mail to the unsubscribe address act on an app's messages (AppConfig.ready)."""
    _HANDLERS[name] = handler


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
    """Hand each token to the apps until one recognizes it; None when none is valid."""
    for token in request.tokens:
        for handler in _HANDLERS.values():
            done = handler.unsubscribe(token, source=source)
            if done is not None:
                return done
    return None
