"""Classify one failure (SMTP reply code, RFC 3463 status, server text) into kind and reason."""

from __future__ import annotations

import re

from .kinds import DEAD_ADDRESS_REASONS, BounceKind, BounceReason
from .rules import active_rulebook

R = BounceReason

# RFC 3463 subject/detail codes, tried when the text matched nothing. Keys are "class-less"
# ("1.1" for X.1.1); the class (2/4/5) decides the kind afterwards.
_STATUS_REASONS: dict[str, BounceReason] = {
    "1.0": R.OTHER,  # "other address status": not proof the mailbox is gone
    "1.1": R.UNKNOWN_USER,
    "1.2": R.UNKNOWN_HOST,
    "1.3": R.POLICY_BLOCK,
    "1.4": R.UNKNOWN_USER,
    "1.5": R.UNKNOWN_USER,
    "1.6": R.MAILBOX_MOVED,
    "1.7": R.POLICY_BLOCK,
    "1.8": R.POLICY_BLOCK,
    "1.10": R.DOMAIN_NOT_ACCEPTING,  # RFC 7505 null MX
    "2.0": R.OTHER,  # "other or undefined mailbox status"
    "2.1": R.MAILBOX_DISABLED,
    "2.2": R.MAILBOX_FULL,
    "2.3": R.MESSAGE_TOO_LARGE,
    "2.4": R.SYSTEM_ERROR,
    "3.0": R.SYSTEM_ERROR,
    "3.1": R.SYSTEM_ERROR,
    "3.2": R.DOMAIN_NOT_ACCEPTING,
    "3.3": R.CONTENT_REJECTED,
    "3.4": R.MESSAGE_TOO_LARGE,
    "3.5": R.SYSTEM_ERROR,
    "4.0": R.NETWORK_ERROR,
    "4.1": R.NETWORK_ERROR,
    "4.2": R.NETWORK_ERROR,
    "4.3": R.NETWORK_ERROR,
    "4.4": R.UNKNOWN_HOST,
    "4.5": R.SYSTEM_ERROR,
    "4.6": R.NETWORK_ERROR,
    "4.7": R.EXPIRED,
    "5.0": R.OTHER,
    "5.1": R.CONTENT_REJECTED,
    "5.2": R.CONTENT_REJECTED,
    "5.3": R.RATE_LIMITED,
    "5.4": R.CONTENT_REJECTED,
    "5.5": R.OTHER,
    "6.0": R.CONTENT_REJECTED,
    "7.0": R.POLICY_BLOCK,
    "7.1": R.POLICY_BLOCK,
    "7.7": R.CONTENT_REJECTED,
    "7.13": R.MAILBOX_SUSPENDED,
    "7.20": R.AUTH_FAILURE,
    "7.21": R.AUTH_FAILURE,
    "7.22": R.AUTH_FAILURE,
    "7.23": R.AUTH_FAILURE,
    "7.24": R.AUTH_FAILURE,
    "7.25": R.SPAM_BLOCK,  # reverse DNS validation failed (RFC 7372)
    "7.26": R.AUTH_FAILURE,
    "7.27": R.DOMAIN_NOT_ACCEPTING,
}

_STATUS_RE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY_RE = re.compile(r"(?<![\d.])([245]\d\d)(?:[ -]|$)")
_SPACE_RE = re.compile(r"\s+")


def normalize_status(status: str) -> str:
    """Return the RFC 3463 code found in `status` ("5.1.1"), or ""."""
    match = _STATUS_RE.search(status or "")
    return ".".join(match.groups()) if match else ""


def find_status(text: str) -> str:
    """Return the first plausible RFC 3463 code in a server text, or ""."""
    for match in _STATUS_RE.finditer(text):
        # Skip version numbers and IP fragments ("8.14.4", "192.0.2.1"): a status is not
        # glued to another dot-number.
        start, end = match.span()
        if (start > 0 and text[start - 1] in ".0123456789") or text[end : end + 1] == ".":
            if text[end : end + 2].strip(".").strip() == "" and text[end : end + 1] == ".":
                pass  # "5.1.1." at the end of a sentence is fine
            else:
                continue
        return ".".join(match.groups())
    return ""


def find_reply_code(text: str) -> int | None:
    """Return the first SMTP reply code (RFC 5321) in a server text, or None."""
    for match in _REPLY_RE.finditer(text):
        start = match.start()
        # A reply code starts the text or follows a separator, never a word or a number.
        if start == 0 or text[start - 1] in " \t\n:;(<>\"'[]=#":
            return int(match.group(1))
    return None


def reason_from_text(text: str) -> BounceReason | None:
    """Return the reason a server text states, or None when it says nothing we know."""
    return _match_text(text)[0]


def _match_text(text: str) -> tuple[BounceReason | None, bool]:
    """The first rule a text matches, and whether it was only the vague last rule."""
    if not text:
        return None, False
    text = _SPACE_RE.sub(" ", text.lower())
    rulebook = active_rulebook()
    rulebook.record(text)
    for reason, pattern, vague in rulebook.text_rules:
        if pattern.search(text):
            return reason, vague
    return None, False


def reason_from_status(status: str) -> BounceReason | None:
    """Return the reason an RFC 3463 code implies, or None for X.0.0 and unknown codes."""
    if not status:
        return None
    _, _, rest = status.partition(".")
    return _STATUS_REASONS.get(rest)


def kind_for(reason: BounceReason, *, temporary: bool) -> BounceKind:
    """Hard only when the address is dead and the server said so for good (5xx)."""
    if reason in (R.COMPLAINT,):
        return BounceKind.COMPLAINT
    if reason in (R.AUTO_REPLY,):
        return BounceKind.AUTO_REPLY
    if reason in (R.DELIVERED, R.NOT_BOUNCE):
        return BounceKind.NOT_BOUNCE
    if reason in DEAD_ADDRESS_REASONS and not temporary:
        return BounceKind.HARD
    return BounceKind.SOFT


_COMMAND_RE = re.compile(
    r"(?:after|in reply to|>>>|response to|did not like our)\s+(?:the\s+)?(?:end\s+of\s+)?"
    r"(data|mail\s+from|rcpt\s+to|helo|ehlo|connect)\b|\b(data|mail\s+from|rcpt\s+to)\s+command"
    # A labelled field ("SMTP command: DATA", or the label on its own line, as m-FILTER does).
    r"|smtp[ _-]?command\W{0,40}?\b(data|mail|rcpt|helo|ehlo)\b"
    # Yahoo-style tags: "User Unknown [RCPT_TO]".
    r"|\[(rcpt_to|mail_from|data)\]",
    re.I,
)


def find_smtp_command(text: str) -> str:
    """The SMTP command a failure answered ("DATA", "MAIL", "RCPT", ...), or "" (last one wins)."""
    command = ""
    for match in _COMMAND_RE.finditer(text):
        word = next(group for group in match.groups() if group)
        command = word.replace("_", " ").split()[0].upper()
    if not command and text:
        rulebook = active_rulebook()
        rulebook.record(text)
        for name, pattern in rulebook.command_phrases:
            if pattern.search(text):
                return name
    return command


def classify_failure(
    *,
    status: str = "",
    reply_code: int | None = None,
    text: str = "",
    temporary: bool | None = None,
    command: str = "",
    words_alone: bool = False,
) -> tuple[BounceKind, BounceReason]:
    """Classify a failure from whatever the report carries; text first, then codes.

    `temporary` overrides the class taken from the codes (a DSN's Action: delayed).
    `command` is the SMTP command that was refused, when the report tells.
    `words_alone` says the report is free text with no RFC 3464 fields: its words are all
    there is to go on (see `_user_unknown_is_filter`).
    """
    status = normalize_status(status)
    if temporary is None:
        if status:
            temporary = status.startswith("4")
        elif reply_code is not None:
            temporary = 400 <= reply_code < 500
        else:
            temporary = False
    reason, vague = _match_text(text)
    status_reason = reason_from_status(status)
    if reason is None:
        reason = status_reason
    elif (
        (vague or reason in (R.EXPIRED, R.NETWORK_ERROR, R.SYSTEM_ERROR))
        and status_reason in DEAD_ADDRESS_REASONS
        and status.split(".")[1:] not in (["0", "0"],)
    ):
        # Vague words ("rejected", "timed out") lose against a precise X.1.1-style code.
        reason = status_reason
    if reason is None:
        if temporary:
            reason = R.OTHER
        elif reply_code in (550, 551, 553) and not status:
            # A bare 550 with no words we know: RFC 5321 says "mailbox unavailable".
            reason = R.UNKNOWN_USER if reply_code != 551 else R.MAILBOX_MOVED
        else:
            reason = R.OTHER
    if reason in DEAD_ADDRESS_REASONS and command in ("MAIL", "HELO", "EHLO", "CONNECT"):
        # Refused before any recipient was named: the complaint is about us, not the address.
        reason = R.POLICY_BLOCK
    elif reason == R.UNKNOWN_USER and _user_unknown_is_filter(
        status, text, command, words_alone=words_alone
    ):
        reason = R.FILTERED
    return kind_for(reason, temporary=temporary), reason


def classify_texts(
    *,
    status: str,
    reply_code: int | None,
    texts: list[str],
    temporary: bool | None = None,
    command: str = "",
    words_alone: bool = False,
) -> tuple[BounceKind, BounceReason]:
    """Classify with the first text that says something we know."""
    chosen = ""
    for text in texts:
        if text and reason_from_text(text) is not None:
            chosen = text
            break
    # Only the failure's own words name its command: a transcript elsewhere in the report may
    # belong to another recipient.
    command = command or find_smtp_command(chosen or texts[0] if texts else "")
    return classify_failure(
        status=status,
        reply_code=reply_code,
        text=chosen,
        command=command,
        temporary=temporary,
        words_alone=words_alone,
    )


def _user_unknown_is_filter(status: str, text: str, command: str, *, words_alone: bool) -> bool:
    """Whether a "user unknown" answer is a recipient-side filter rather than a dead address.

    An RFC 3463 address status (X.1.x) or a refusal of RCPT TO means the mailbox is gone. The
    same words said only after DATA (the address had passed RCPT TO), or carried by X.2.0/X.2.1
    ("mailbox disabled, not accepting messages") or by an X.7.x security status, come from a
    filter that looked at the message: the address itself may be fine. So do the words alone
    in a free-text report from a gateway that names no code and no command (filtering
    appliances answer "unknown user" to refuse mail they have already taken): unconfirmed, they
    are soft, and the policy table still retires the address after repeated soft bounces.
    """
    if command == "RCPT":
        return False
    detail = status.partition(".")[2]
    if detail.startswith("1."):
        return False
    if command == "DATA":
        return True
    if not detail or detail == "0.0":
        # The DSN field says nothing: a code inside the server's words may.
        detail = find_status(text).partition(".")[2]
    if detail in ("2.0", "2.1") or detail.startswith("7."):
        return True
    if not words_alone or detail or command:
        return False
    if not _RELAYED_RE.search(text):
        # No remote server's reply in the words: the reporting system looked the address up
        # itself (Notes, Exchange, IMail say so in their own words), a directory's verdict.
        return False
    directory_miss = active_rulebook().directory_miss
    return directory_miss is None or not directory_miss.search(text)


# A relayed SMTP reply in a text report: a reply code standing alone, or words that quote one.
_RELAYED_RE = re.compile(
    r"(?<![\w.,:/-])[45][0-5]\d(?![\w.,:/-])|remote (?:host|server|mail server|mta)|\bsaid:"
    r"|error_code",
    re.I,
)


def classify_smtp_reply(
    *, code: int | None, enhanced: str = "", text: str = "", command: str = ""
) -> tuple[BounceKind, BounceReason]:
    """Classify a synchronous SMTP reply: 2xx delivered, 4xx soft, 5xx hard only for dead addresses.

    The same rules as a report's diagnostic (`classify_failure`, which a DSN's reader calls
    too): `command` is the SMTP command the reply answered ("RCPT", "DATA", ...), which the
    sender knows and a DSN says in its words ("in reply to RCPT TO command").
    """
    enhanced = normalize_status(enhanced) or find_status(text[:200])
    if code is None:
        code = find_reply_code(text[:10])
    if code is not None and 200 <= code < 300:
        return BounceKind.NOT_BOUNCE, R.DELIVERED
    if code is not None and 400 <= code < 500:
        temporary = True
    elif code is not None and 500 <= code < 600:
        temporary = False
    else:
        temporary = None
    return classify_failure(
        status=enhanced,
        reply_code=code,
        text=text,
        temporary=temporary,
        command=command.upper() or find_smtp_command(text),
    )
