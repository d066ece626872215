"""Provider notifications sent by email as JSON: Amazon SES (through SNS) bounces and complaints."""

from __future__ import annotations

import json
import re
from typing import Any

from .classify import classify_failure, find_reply_code, find_status, normalize_status
from .headers import field_value, first_address, one_line
from .kinds import BounceKind, BounceReason, BounceRecipient


def ses_notification(text: str) -> tuple[BounceRecipient, ...] | None:
    """The recipients of an SES notification in a report's text, None when there is none."""
    start = text.find('{"notificationType"')
    if start < 0:
        start = text.find('{"eventType"')
    if start < 0:
        return None
    data = _json_object(text, start)
    if data is None:
        # Wrapped or truncated JSON: decode the parts we need one by one.
        data = {}
        for name in ("notificationType", "eventType"):
            match = re.search(r'"' + name + r'"\s*:\s*"(\w+)"', text[start:])
            if match:
                data[name] = match.group(1)
        for name in ("bounce", "complaint", "delivery"):
            position = text.find(f'"{name}":{{', start)
            if position >= 0:
                data[name] = _json_object(text, text.index("{", position)) or {}
    kind = str(data.get("notificationType") or data.get("eventType") or "").lower()
    out: list[BounceRecipient] = []
    if kind == "bounce":
        bounce = data.get("bounce") or {}
        permanent = str(bounce.get("bounceType", "")).lower() == "permanent"
        mta = str(bounce.get("reportingMTA", ""))
        for item in bounce.get("bouncedRecipients") or ():
            diagnostic = field_value(str(item.get("diagnosticCode", "")))
            status = normalize_status(str(item.get("status", ""))) or find_status(diagnostic)
            reply_code = find_reply_code(diagnostic)
            rkind, reason = classify_failure(
                status=status, reply_code=reply_code, text=diagnostic, temporary=not permanent
            )
            out.append(
                BounceRecipient(
                    recipient=first_address(str(item.get("emailAddress", ""))) or None,
                    kind=rkind,
                    reason=reason,
                    status=status,
                    reply_code=reply_code,
                    diagnostic=one_line(diagnostic),
                    reporting_mta=field_value(mta),
                )
            )
    elif kind == "complaint":
        complaint = data.get("complaint") or {}
        for item in complaint.get("complainedRecipients") or ():
            out.append(
                BounceRecipient(
                    recipient=first_address(str(item.get("emailAddress", ""))) or None,
                    kind=BounceKind.COMPLAINT,
                    reason=BounceReason.COMPLAINT,
                    feedback_type=str(complaint.get("complaintFeedbackType", "abuse")),
                )
            )
    elif kind == "delivery":
        delivery = data.get("delivery") or {}
        for address in delivery.get("recipients") or ():
            out.append(
                BounceRecipient(
                    recipient=first_address(str(address)) or None,
                    kind=BounceKind.NOT_BOUNCE,
                    reason=BounceReason.DELIVERED,
                    diagnostic=one_line(str(delivery.get("smtpResponse", ""))),
                    reply_code=find_reply_code(str(delivery.get("smtpResponse", ""))),
                    status=find_status(str(delivery.get("smtpResponse", ""))),
                    reporting_mta=str(delivery.get("reportingMTA", "")),
                )
            )
    return tuple(out) or None


def _json_object(text: str, start: int) -> dict[str, Any] | None:
    for candidate in (text[start:], text[start:].replace("\n", "")):
        try:
            value, _ = json.JSONDecoder().raw_decode(candidate)
        except ValueError:
            continue
        return value if isinstance(value, dict) else None
    return None
