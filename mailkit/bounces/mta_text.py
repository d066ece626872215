"""MTA free-text bounces: recipients named in the words, their explanations, list refusals."""

from __future__ import annotations

import re
from email.message import Message

from .autoreply import AUTO_SUBJECT_RE
from .classify import (
    classify_texts,
    find_reply_code,
    find_smtp_command,
    find_status,
    reason_from_text,
)
from .headers import ADDR, ADDR_RE, header, one_line, original_recipient
from .kinds import BounceKind, BounceReason, BounceRecipient

# Delay warnings written as text: the MTA is still trying (nothing has failed for good yet).
_STILL_TRYING_RE = re.compile(
    r"warning message only|will be retried|will continue (?:to try|trying)|still (?:trying|"
    r"undelivered)|delivery attempts will continue|has not yet been delivered|not been delivered yet",
    re.I,
)

_LIST_REFUSAL_RE = re.compile(
    r"(?:are|is) not (?:a )?(?:member|subscriber)s? (?:of|to) (?:this|the) (?:mailing )?list"
    r"[ \t\n]*<?(" + ADDR + r")",
    re.I,
)
_LEADING_CODES_RE = re.compile(r"[ \t]*[245]\d\d[ -](?:[245]\.\d{1,3}\.\d{1,3}[ \t]+)?")
_CONT_STATUS_REPLY_RE = re.compile(r"(?<![\d.])([245]\d\d)[ -]#?([245]\.\d{1,3}\.\d{1,3})\b")

# A line that names a recipient: optional label, the address (maybe in <> or quotes), then
# nothing, a separator or the start of an explanation.
_RECIPIENT_LINE_RE = re.compile(
    r"^[ \t]*(?:[245]\d\d[ -](?:[245]\.\d{1,3}\.\d{1,3}[ \t]+)?)?(?:(?:final-|original-)?(?:recipient|rcpt to|to|address|user|addressee|failed recipient"
    r"|recipient address|destinataire|empf(?:ae|ä)nger|could not be delivered to)s?(?:\(s\))?"
    r"[ \t]*:[ \t]*)?"
    r"(?:\"[^\"]*\"[ \t]*<|[^<>\n@:\d]{1,40}<|[<\[\"'])?(" + ADDR + r")[>\]\"']?"
    r"[ \t]*(?:$|[:.,;]|\(|-|\bon\b|\bwas\b|\bfailed\b|\.\.\.|[ \t]+\S)",
    re.I | re.M,
)

_BOUNCE_FROM_RE = re.compile(
    r"mailer-?daemon|post_?master|mail ?delivery|mail-?daemon|double-?bounce|\bbounce|"
    r"mail administrator|mail system|nobody@|delivery ?(?:status|subsystem)|mailmaster",
    re.I,
)
_BOUNCE_SUBJECT_RE = re.compile(
    r"undeliver|undelivered|non[- ]?deliver|delivery (?:status|failure|failed|report|problem|"
    r"notification|has failed|error)|failure notice|returned mail|mail delivery|"
    r"could not be delivered|not delivered|delivery failed|mail system error|returned to sender|"
    r"bounce|rejected|unzustellbar|nicht zustellbar|non remis|no entregado|不達|退信|"
    r"未能送达|投递失败|failed delivery|warning: could not send|delayed mail|"
    r"message (?:status|delivery)|mail could not|delivery final|error sending|"
    r"エラー通知|配信エラー|送信エラー|送信失敗|配信不能|未配信|届きませんでした|"
    r"发送失败|系统退信|无法投递|邮件被退回",
    re.I,
)


def list_refusal(bounce_text: str) -> BounceRecipient | None:
    """A mailing-list manager's refusal of our post to the list, None when it is not one."""
    match = _LIST_REFUSAL_RE.search(bounce_text[:4000])
    if not match:
        return None
    # A mailing-list manager (fml, Mailman, ezmlm) refused our post to the list: the list
    # address bounced, for policy, and it is still alive.
    return BounceRecipient(
        recipient=match.group(1),
        kind=BounceKind.SOFT,
        reason=BounceReason.POLICY_BLOCK,
        diagnostic=one_line(match.group(0)),
    )


def looks_like_bounce(msg: Message, bounce_text: str) -> bool:
    """Whether a message's headers say it is a bounce (and not an auto-reply)."""
    if msg.get("x-failed-recipients"):
        return True
    if AUTO_SUBJECT_RE.search(header(msg, "subject")) and not _BOUNCE_SUBJECT_RE.search(
        header(msg, "subject")
    ):
        return False
    if _BOUNCE_SUBJECT_RE.search(header(msg, "subject")):
        return True
    if _BOUNCE_FROM_RE.search(header(msg, "from")):
        return True
    return False


def text_blocks(text: str, own: set[str]) -> dict[str, str]:
    """Map each recipient named at the start of a line to the lines that explain it."""
    blocks = _text_blocks_excluding(text, own)
    if not blocks and own:
        # Anonymised or self-addressed reports: the recipient may also be in our headers.
        blocks = _text_blocks_excluding(text, set())
    return blocks


def _text_blocks_excluding(text: str, own: set[str]) -> dict[str, str]:
    lines = text.splitlines()
    starts: list[tuple[int, str, str]] = []
    for index, line in enumerate(lines):
        match = _RECIPIENT_LINE_RE.match(line)
        if not match:
            continue
        address = match.group(1).strip(".")
        if address.lower() in own or _is_daemon(address):
            continue
        rest = line[match.end(1) :]
        codes = _LEADING_CODES_RE.match(line)
        if codes:
            # "550 5.1.1 <a@b>: ...": the codes before the address belong to the explanation.
            rest = codes.group(0) + rest.lstrip(" \t>:")
        starts.append((index, address, rest))
    blocks: dict[str, str] = {}
    for position, (index, address, rest) in enumerate(starts):
        end = starts[position + 1][0] if position + 1 < len(starts) else len(lines)
        body: list[str] = [rest.strip(" \t>:.")]
        blank = 0
        for line in lines[index + 1 : min(end, index + 16)]:
            if not line.strip():
                blank += 1
                if blank >= 2 and any(body):
                    break
                continue
            blank = 0
            body.append(line.strip())
        key = address.lower()
        joined = " ".join(b for b in body if b)
        if joined and joined not in blocks.get(key, ""):
            blocks[key] = (blocks.get(key, "") + " " + joined).strip()
        else:
            blocks.setdefault(key, "")
    return blocks


def _is_daemon(address: str) -> bool:
    local = address.split("@", 1)[0].lower()
    return local in ("mailer-daemon", "postmaster", "mailerdaemon", "mail-daemon", "double-bounce")


def text_recipients(
    msg: Message,
    bounce_text: str,
    own: set[str],
    originals: list[Message],
    reporting_mta: str,
) -> tuple[BounceRecipient, ...]:
    """The failed recipients a text bounce names, each classified by its own words."""
    blocks = text_blocks(bounce_text, own)
    failed = [
        a.strip(".")
        for value in msg.get_all("x-failed-recipients") or ()
        for a in ADDR_RE.findall(str(value))
    ]
    addresses: list[str] = []
    for address in failed + list(blocks):
        if address.lower() not in {a.lower() for a in addresses}:
            addresses.append(address)
    if failed:
        addresses = [a for a in addresses if a.lower() in {f.lower() for f in failed}]
    for exclude in (own, set()):
        if addresses:
            break
        for address in ADDR_RE.findall(bounce_text):
            address = address.strip(".")
            if address.lower() not in exclude and not _is_daemon(address):
                addresses.append(address)
                break
    if not addresses:
        address = original_recipient(originals)
        if address:
            addresses.append(address)
    out = []
    for address in addresses or [None]:  # type: ignore[list-item]
        block = blocks.get(address.lower(), "") if address else ""
        diagnostic = block if _has_signal(block) else bounce_text
        status, reply_code = _codes(diagnostic)
        kind, reason = classify_texts(
            status=status,
            reply_code=reply_code,
            texts=[block, bounce_text],
            temporary=bool(_STILL_TRYING_RE.search(bounce_text)) or None,
            command=find_smtp_command(block) or _command_before(address, bounce_text),
            words_alone=True,
        )
        out.append(
            BounceRecipient(
                recipient=address,
                kind=kind,
                reason=reason,
                status=status,
                reply_code=reply_code,
                diagnostic=_diagnostic_line(diagnostic),
                reporting_mta=reporting_mta,
            )
        )
    return tuple(out)


def _has_signal(text: str) -> bool:
    return bool(text) and (bool(find_status(text)) or reason_from_text(text) is not None)


def _codes(text: str) -> tuple[str, int | None]:
    match = _CONT_STATUS_REPLY_RE.search(text)
    if match:
        return match.group(2), int(match.group(1))
    return find_status(text), find_reply_code(text)


def _diagnostic_line(text: str) -> str:
    """The most telling line of a text: the one with a reply code, else the first."""
    for line in text.splitlines():
        if _CONT_STATUS_REPLY_RE.search(line) or find_reply_code(line.strip()) is not None:
            return one_line(line)
    return one_line(text)


def _command_before(address: str | None, bounce_text: str) -> str:
    """The last SMTP command a text report names just before it first names `address`.

    Sendmail, DragonFly and qmail write the command ("did not like our RCPT TO:", ">>> RCPT
    To:<a@b>") on the line above the reply that names the recipient.
    """
    if not address:
        return ""
    position = bounce_text.lower().find(address.lower())
    while position >= 0:
        line_start = bounce_text.rfind("\n", 0, position) + 1
        line_end = bounce_text.find("\n", position)
        before = bounce_text[max(0, line_start - 300) : line_end if line_end >= 0 else None]
        command = find_smtp_command(before)
        if command:
            return command
        position = bounce_text.lower().find(address.lower(), position + len(address))
    return ""
