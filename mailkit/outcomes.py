"""Turn one SMTP send result into a delivery outcome: pure, no database.

RFC 5321 section 4.5.4.1: a transient failure (4xx, timeout, dropped connection) is retried
with growing intervals until a give-up lifetime; a permanent failure (5xx) is never retried.
A 5xx is a bounce (the address is dead, so it is suppressed) only when the bounce classifier
says the address itself is the problem; a policy or spam block fails the delivery alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from mailkit.bounces import BounceKind, classify_smtp_reply
from mailkit.smtp import SendResult, SendStatus

# The SMTP command each stage of mailkit.smtp ends with: the classifier tells a refused
# address (RCPT) from a refused message (DATA) or a refused sender (MAIL, the greeting).
_STAGE_COMMANDS = {
    "connect": "CONNECT",
    "tls": "EHLO",
    "auth": "EHLO",
    "mail": "MAIL",
    "rcpt": "RCPT",
    "data": "DATA",
}


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float = 300.0
    factor: float = 2.0
    max_seconds: float = 4 * 3600.0
    lifetime_seconds: float = 4 * 24 * 3600.0

    def delay(self, attempts: int) -> timedelta:
        """The wait before the next attempt, after `attempts` attempts (1-based)."""
        # The exponent is capped: factor ** 1024 overflows a float long before any lifetime.
        seconds = self.base_seconds * self.factor ** min(max(attempts - 1, 0), 64)
        return timedelta(seconds=min(seconds, self.max_seconds))


@dataclass(frozen=True)
class Outcome:
    delivery_id: int
    status: str  # a delivery.models.DeliveryStatus value
    reason: str
    smtp_code: int | None
    enhanced_status: str
    reply: str
    attempted_at: datetime
    next_attempt_at: datetime | None = None
    message_id: str = ""
    suppress: bool = False


def outcome_for_result(
    result: SendResult,
    *,
    delivery_id: int,
    attempts: int,
    first_attempt_at: datetime | None,
    now: datetime,
    policy: RetryPolicy,
    message_id: str = "",
) -> Outcome:
    """Decide what a send result means for the delivery; `attempts` counts this one."""
    base = Outcome(
        delivery_id=delivery_id,
        status="sent",
        reason="",
        smtp_code=result.code,
        enhanced_status=result.enhanced or "",
        reply=_reply_text(result),
        attempted_at=now,
        message_id=message_id,
    )
    if result.status == SendStatus.SENT:
        return base
    kind, reason = classify_smtp_reply(
        code=result.code,
        enhanced=result.enhanced or "",
        text=result.text or "",
        command=_STAGE_COMMANDS.get(result.stage, ""),
    )
    if result.status == SendStatus.TEMPORARY:
        started = first_attempt_at or now
        if (now - started).total_seconds() >= policy.lifetime_seconds:
            return replace(base, status="failed", reason="expired")
        return replace(
            base,
            status="deferred",
            reason=str(reason),
            next_attempt_at=now + policy.delay(attempts),
        )
    if result.stage == "size":
        return replace(base, status="failed", reason="message_too_large")
    if kind == BounceKind.HARD:
        return replace(base, status="bounced", reason=str(reason), suppress=True)
    return replace(base, status="failed", reason=str(reason))


def failed_outcome(*, delivery_id: int, reason: str, detail: str, now: datetime) -> Outcome:
    """An outcome decided before any SMTP conversation (render error, bad address)."""
    return Outcome(
        delivery_id=delivery_id,
        status="failed",
        reason=reason,
        smtp_code=None,
        enhanced_status="",
        reply=detail[:2000],
        attempted_at=now,
    )


def _reply_text(result: SendResult) -> str:
    parts = [str(result.code)] if result.code else []
    if result.text:
        parts.append(result.text)
    text = " ".join(parts) or result.stage
    return text[:2000]
