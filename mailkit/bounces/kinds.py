"""Value types of the bounce classifier: kinds, reasons, per-recipient results."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from mailkit.text import clean_text, has_refused


class BounceKind(StrEnum):
    """What a report means for the address it names."""

    HARD = "hard"  # the address is dead: stop sending to it
    SOFT = "soft"  # this message failed; the address may still be fine
    COMPLAINT = "complaint"  # RFC 5965 feedback report (the recipient complained)
    AUTO_REPLY = "auto-reply"  # RFC 3834 auto-reply: never a bounce
    NOT_BOUNCE = "not-a-bounce"  # success notices, ordinary mail


class BounceReason(StrEnum):
    """Closed vocabulary of reasons; `kind_for_reason` maps each to a default kind."""

    # The address is dead (hard).
    UNKNOWN_USER = "unknown_user"
    UNKNOWN_HOST = "unknown_host"
    MAILBOX_MOVED = "mailbox_moved"
    MAILBOX_DISABLED = "mailbox_disabled"
    DOMAIN_NOT_ACCEPTING = "domain_not_accepting"  # null MX (RFC 7505), "does not accept mail"
    # This message failed; the address may be fine (soft).
    MAILBOX_FULL = "mailbox_full"
    MAILBOX_SUSPENDED = "mailbox_suspended"  # temporarily suspended / inactive
    MESSAGE_TOO_LARGE = "message_too_large"
    SPAM_BLOCK = "spam_block"  # blocklists, reputation, content judged spam
    POLICY_BLOCK = "policy_block"  # local policy, filters, sender rejected
    # The recipient's own filter refused this message ("user unknown" said only after DATA,
    # X.2.0/X.2.1/X.7.x with "user unknown", "refused due to recipient preferences").
    FILTERED = "filtered"
    AUTH_FAILURE = "auth_failure"  # SPF / DKIM / DMARC / reverse DNS
    RATE_LIMITED = "rate_limited"
    RELAY_DENIED = "relay_denied"
    NETWORK_ERROR = "network_error"
    CONTENT_REJECTED = "content_rejected"  # malformed message, virus, forbidden content
    SYSTEM_ERROR = "system_error"  # remote system full or broken
    EXPIRED = "expired"  # gave up after retrying
    DELAYED = "delayed"  # still retrying (RFC 3464 Action: delayed)
    OTHER = "other"
    # Not failures.
    COMPLAINT = "complaint"
    AUTO_REPLY = "auto_reply"
    DELIVERED = "delivered"
    NOT_BOUNCE = "not_bounce"


DEAD_ADDRESS_REASONS = frozenset(
    {
        BounceReason.UNKNOWN_USER,
        BounceReason.UNKNOWN_HOST,
        BounceReason.MAILBOX_MOVED,
        BounceReason.MAILBOX_DISABLED,
        BounceReason.DOMAIN_NOT_ACCEPTING,
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class BounceRecipient:
    """The outcome for one recipient named by a report."""

    recipient: str | None
    kind: BounceKind
    reason: BounceReason
    status: str = ""  # RFC 3463 enhanced status code, "5.1.1", or ""
    reply_code: int | None = None  # SMTP reply code (RFC 5321), when the report has one
    diagnostic: str = ""  # the remote server's words, one line, bounded
    reporting_mta: str = ""
    feedback_type: str = ""  # RFC 5965 Feedback-Type of a complaint


@dataclass(frozen=True, slots=True, kw_only=True)
class BounceReport:
    """Everything found in one inbound report."""

    recipients: tuple[BounceRecipient, ...]
    envelope_to: str = ""  # the (VERP) address the report was sent to
    envid: str = ""  # RFC 3461 Original-Envelope-Id
    delivery_header: str = ""  # X-Skylark-Delivery of the returned original message
    original_message_id: str = ""

    @property
    def kind(self) -> BounceKind:
        """The kind of the first recipient, NOT_BOUNCE when there is none."""
        return self.recipients[0].kind if self.recipients else BounceKind.NOT_BOUNCE

    def storable(self) -> BounceReport:
        """This report with every text cleaned of what the databases refuse (NUL, lone
        surrogates from undecodable bytes): a hostile report must still be stored."""
        recipients = tuple(_storable(recipient) for recipient in self.recipients)
        cleaned: BounceReport = dataclasses.replace(_storable(self), recipients=recipients)
        return cleaned


def _storable(item: Any) -> Any:
    changes = {
        f.name: clean_text(value)
        for f in dataclasses.fields(item)
        if isinstance(value := getattr(item, f.name), str) and has_refused(value)
    }
    return dataclasses.replace(item, **changes) if changes else item
