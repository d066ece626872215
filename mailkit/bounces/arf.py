"""RFC 5965 feedback reports (ARF complaints) and Microsoft JMRP complaints."""

from __future__ import annotations

import re
from email.message import Message

from .headers import field_blocks, field_value, first_address, one_line, original_recipient
from .kinds import BounceKind, BounceReason, BounceRecipient


def is_feedback(msg: Message, readable: str) -> bool:
    """Whether a report is an RFC 5965 feedback report, by its MIME type or its fields."""
    if msg.get_content_type() == "multipart/report":
        if str(msg.get_param("report-type") or "").lower() == "feedback-report":
            return True
    return bool(re.search(r"(?im)^feedback-type:\s*\S", readable))


def feedback_recipients(
    texts: list[str], originals: list[Message], readable: str
) -> tuple[BounceRecipient, ...]:
    """The complaint, for the recipient the report or its returned original names."""
    fields: dict[str, str] = {}
    for block in field_blocks("\n\n".join(texts) or readable):
        for name, value in block.items():
            fields.setdefault(name, value)
    addresses: list[str] = []
    for name in ("original-rcpt-to", "removal-recipient"):
        address = first_address(fields.get(name, ""))
        if address:
            addresses.append(address)
            break
    if not addresses:
        address = original_recipient(originals)
        if address:
            addresses.append(address)
    feedback_type = fields.get("feedback-type", "abuse").strip().lower() or "abuse"
    return tuple(
        BounceRecipient(
            recipient=address,
            kind=BounceKind.COMPLAINT,
            reason=BounceReason.COMPLAINT,
            diagnostic=one_line(fields.get("user-agent", "")),
            reporting_mta=field_value(fields.get("reported-domain", "")),
            feedback_type=feedback_type,
        )
        for address in (addresses or [None])  # type: ignore[list-item]
    )


def hotmail_complaint(originals: list[Message]) -> bool:
    """Whether a returned original is a Microsoft JMRP complaint."""
    # Microsoft JMRP reports are not ARF: the complained-about message comes back whole,
    # stamped with the original recipient.
    return any(original.get("x-hmxmroriginalrecipient") for original in originals)
