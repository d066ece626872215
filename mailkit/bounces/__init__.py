"""Bounce classifier: parse DSNs, MTA text bounces, ARF complaints and auto-replies (pure, no ORM)."""

from .classify import classify_smtp_reply
from .kinds import BounceKind, BounceReason, BounceRecipient, BounceReport
from .parse import parse_bounce

__all__ = [
    "BounceKind",
    "BounceReason",
    "BounceRecipient",
    "BounceReport",
    "classify_smtp_reply",
    "parse_bounce",
]
