"""Classify one failure (SMTP reply code, RFC 3463 status, server text) into kind and reason."""

from __future__ import annotations

import re

from .kinds import DEAD_ADDRESS_REASONS, BounceKind, BounceReason

R = BounceReason

# Server texts, tried in order: the first match wins. The order matters where words overlap:
# "mailbox full" and "size limit" come before "user unknown"; specific blocks (spam, DMARC)
# before the address checks; the vague words ("rejected", "denied") last.
_TEXT_RULES: tuple[tuple[BounceReason, re.Pattern[str]], ...] = tuple(
    (reason, re.compile(pattern))
    for reason, pattern in (
        (
            R.MAILBOX_FULL,
            r"mailbox (?:is )?full|mailbox (?:is )?over ?quota|over ?quota|quota (?:exceeded|exceed)"
            r"|exceeded (?:the |his |her |its )?(?:storage|quota|mailbox)|mail ?box size limit"
            r"|mailfolder is full|full mailbox|mailbox (?:has )?exceeded|exceeds? (?:the )?quota"
            r"|disk quota|insufficient (?:mailbox )?(?:space|storage)|not enough (?:storage|space)"
            r"|mailbox is (?:currently )?(?:too )?full|recipient'?s? (?:mailbox|inbox) is full"
            r"|user has exceeded|mailbox for user is full|no space left|is full and cannot"
            r"|storage (?:limit|quota)|inbox is full|account is full|over the allowed quota"
            r"|quota_exceeded|mbox full|maildir over quota|user over quota",
        ),
        (
            R.MESSAGE_TOO_LARGE,
            r"message (?:is )?too (?:large|big)|too (?:large|big) (?:message|for)"
            r"|message size (?:exceeds|limit)|size (?:exceeds|limit exceeded)|exceeds? (?:the )?"
            r"(?:maximum|max|fixed maximum|size limit|message size)|message file too big"
            r"|message length exceeds|maximum (?:message )?size|larger than (?:the )?(?:maximum|"
            r"allowed)|mail size limit",
        ),
        (
            R.AUTH_FAILURE,
            r"\bdmarc\b|\bspf\b|\bdkim\b|sender policy framework|unauthenticated (?:e?mail|sender)"
            r"|authentication (?:check )?fail|not authenticate|sender (?:domain )?authentication"
            r"|failed (?:the )?sender id",
        ),
        (
            R.SPAM_BLOCK,
            r"spam|blacklist|black list|blocklist|block list|denylist|\bdnsbl\b|\brbl\b|\brbls\b"
            r"|spamhaus|spamcop|barracuda|sorbs|reputation|junk mail|bulk mail|unsolicited"
            r"|reverse dns|reverse lookup|\bptr\b|rdns|no dns entry|dns (?:record|name) for"
            r"|not have a (?:valid )?(?:reverse|ptr)|cannot find your hostname|dynamic ip"
            r"|dial-?up|residential ip|(?<!not )listed (?:at|in|on|by)|is listed|client host .{0,80} blocked"
            r"|ip (?:address )?(?:has been |is )?blocked|blocked using|\bphish",
        ),
        (
            R.RATE_LIMITED,
            r"too many (?:connections|messages|recipients|mails|emails|concurrent|sessions|errors)"
            r"|rate limit|ratelimit|rate of|throttl|sending (?:rate|limit)|exceeded (?:the )?(?:rate|"
            r"sending|message) limit|too fast|too frequently|try (?:again )?later|connection limit"
            r"|temporarily deferred|frequency limit|speed limit|exceeded .{0,40}limit"
            r"|receiving mail at a rate",
        ),
        (
            R.RELAY_DENIED,
            r"relay(?:ing)? (?:access )?(?:denied|not permitted|not allowed|prohibited)"
            r"|not (?:permitted|allowed) to relay|unable to relay|we do not relay|no relaying"
            r"|relay not permitted|cannot relay|isn't allowed to relay|is not a gateway",
        ),
        (
            # The complaint is about our sender address, not the recipient (RFC 3463 X.1.7/X.1.8).
            R.POLICY_BLOCK,
            r"sender (?:address|domain)|domain of sender|unroutable sender|sender .{0,30}(?:rejected|"
            r"denied|unknown|invalid|refused|blocked|not (?:exist|allowed|permitted))|recipient "
            r"preferences|rejected by (?:the )?recipient|recipient (?:has )?(?:rejected|blocked|filter)",
        ),
        (
            R.MAILBOX_SUSPENDED,
            r"suspended|temporar(?:il)?y? (?:disabled|inactive|unavailable|locked|blocked)"
            r"|mailbox is inactive|account is inactive|inactive (?:account|user|mailbox)|is frozen"
            r"|(?:account|mailbox|user|address|compte)(?: has been| is| was)?(?: temporar(?:il)?y)?"
            r" (?:disabled|deactivated|discontinued|locked|blocked|bloque)"
            r"|disabled (?:recipient|account|mailbox|user)|is disabled|been disabled|recipient suspend",
        ),
        (
            R.MAILBOX_DISABLED,
            r"(?:account|mailbox|user|address)(?: has been| is| was)? (?:closed|terminated|deleted|"
            r"removed|cancell?ed|expired)|no longer (?:active|in use|valid|available|exists?)",
        ),
        (
            R.MAILBOX_MOVED,
            r"has moved|user has moved|address has changed|no longer at this address"
            r"|mailbox has been moved|new address",
        ),
        (
            R.DOMAIN_NOT_ACCEPTING,
            r"not accepting network messages",  # RFC 3463 X.3.2 text
        ),
        (
            R.NETWORK_ERROR,
            r"host not found, try again|temporary failure in name resolution|try again later.{0,20}dns",
        ),
        (
            R.UNKNOWN_HOST,
            r"bad destination system address|host (?:or domain name )?not found|unknown host|host unknown|domain not found"
            r"|no such domain|unknown domain|domain (?:does not|doesn't) exist|name or service not known"
            r"|unrouteable (?:mail )?(?:address|domain)|unroutable|non-existent host"
            r"|domain name not found|name service error|no (?:mx|a|dns) (?:record|host)"
            r"|mx (?:lookup|record) (?:failed|not found)|could not resolve|cannot resolve"
            r"|unknown mail domain|invalid domain|domain (?:is )?invalid|bad domain"
            r"|host not reachable|nxdomain|domain (?:name )?(?:does )?not exist|unresolvable"
            r"|recipient domain .{0,40} (?:not|invalid)|hostname .{0,40} not found",
        ),
        (
            R.UNKNOWN_USER,
            r"user unknown|unknown user|no such (?:user|mailbox|recipient|account|person|address|"
            r"local user)|recipient (?:address )?unknown|unknown (?:recipient|local[- ]part|address|"
            r"mailbox|alias|or illegal alias)|(?:mailbox|user|recipient|account|address|addressee)"
            r"(?: name)? (?:not found|unknown|does ?n[o']t exist|not exist|is not (?:valid|known|"
            r"a valid)|not valid|not listed|is unknown|invalid)|does not exist|doesn'?t exist"
            r"|not exist|nonexist|non-exist|invalid (?:recipient|mailbox|user|address|account)"
            r"|not a valid (?:recipient|mailbox|user|address)|no mailbox|mailbox unavailable"
            r"|mailbox not available|recipnotfound|recipient not found|address not found"
            r"|user not found|bad destination mailbox|not a known user|no valid recipients"
            r"|undeliverable address|doesn'?t have an? .{0,40} account|not our customer"
            r"|no account by that name|unknown or invalid|addressee unknown|rejected: user"
            r"|unknown in (?:local|virtual|relay) recipient table|not listed in|no such"
            r"|not a recipient|invalid address|destination address rejected|not our user"
            r"|recipient address rejected: access denied|directory lookup|no such"
            r"|check if (?:the )?address is correct"  # Trend Micro InterScan
            # Japanese: "(user|address) ... not found / does not exist".
            r"|(?:ユーザー?|宛先|アドレス|受信者).{0,80}(?:見つかりません|存在しません)",
        ),
        (
            R.DOMAIN_NOT_ACCEPTING,
            r"does not accept (?:e-?)?mail|not accept(?:ing)? (?:any )?(?:e-?)?mail|null mx"
            # Exim's words for an RFC 7505 null MX.
            r"|(?:mx|srv) record indicated no smtp service"
            r"|accepts no mail|no mail (?:service|accepted)",
        ),
        (
            R.EXPIRED,
            r"expired|retry time|retry timeout|timed? ?out|too long|giving up|gave up"
            r"|could not be delivered for|was not delivered within|delivery time|undeliverable for"
            r"|unable to deliver .{0,40} (?:days|hours)|queue(?:d)? too long|lifetime",
        ),
        (
            R.NETWORK_ERROR,
            r"connection (?:refused|reset|timed out|lost|closed|dropped)|network|unreachable"
            r"|could not connect|can'?t connect|unable to connect|no route to host"
            r"|routing loop|mail loop|loop(?:s)? back|too many hops|hop count|dns (?:error|failure)"
            r"|temporary (?:lookup|dns) failure|lost connection|broken pipe",
        ),
        (
            R.CONTENT_REJECTED,
            r"virus|malware|infected|content (?:rejected|filter|policy)|message content rejected"
            r"|attachment|not rfc ?\d* ?compliant|rfc ?\d* ?compliant|malformed"
            r"|header (?:error|syntax|too long)|invalid (?:header|message|mime)|8-?bit|encoding"
            r"|syntax error|bad command|line too long|forbidden content|prohibited",
        ),
        (
            R.SYSTEM_ERROR,
            r"system (?:error|failure|full)|insufficient system storage|disk full"
            r"|local (?:error|configuration)|internal (?:server )?error|server error"
            r"|mailer error|configuration error|out of memory|resources",
        ),
        (
            R.POLICY_BLOCK,
            r"policy|not (?:permitted|allowed|authorized|authorised)|denied|refused|rejected|block"
            r"|prohibit|forbidden|filter|restricted|not welcome|banned|access|reject",
        ),
    )
)

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
    last = len(_TEXT_RULES) - 1
    for index, (reason, pattern) in enumerate(_TEXT_RULES):
        if pattern.search(text):
            return reason, index == last
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

# Phrases that name the refused command without quoting it (RFC 5321 phases).
_COMMAND_PHRASES: tuple[tuple[str, re.Pattern[str]], ...] = (
    # qmail-remote: "... does not like recipient." is its RCPT TO refusal.
    ("RCPT", re.compile(r"does not like recipient", re.I)),
    ("MAIL", re.compile(r"does not like sender|but sender was rejected", re.I)),
    ("HELO", re.compile(r"but my name was rejected", re.I)),
    ("DATA", re.compile(r"failed after i sent the message", re.I)),
)


def find_smtp_command(text: str) -> str:
    """The SMTP command a failure answered ("DATA", "MAIL", "RCPT", ...), or "" (last one wins)."""
    command = ""
    for match in _COMMAND_RE.finditer(text):
        word = next(group for group in match.groups() if group)
        command = word.replace("_", " ").split()[0].upper()
    if not command and text:
        for name, pattern in _COMMAND_PHRASES:
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


# Definite directory answers: a mailbox server's own lookup, not a gateway's words.
_DIRECTORY_MISS_RE = re.compile(
    r"\(000c05a6\)"  # Exchange 2000/2003 MSEXCH:IMS "Unknown Recipient" error code
    r"|name (?:&|and) address book|not listed in (?:the )?(?:public )?(?:directory|address)"
    r"|check if (?:the )?address is correct|ディレクトリ",
    re.I,
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
    return words_alone and not detail and not command and not _DIRECTORY_MISS_RE.search(text)


def classify_smtp_reply(
    *, code: int | None, enhanced: str = "", text: str = ""
) -> tuple[BounceKind, BounceReason]:
    """Classify a synchronous SMTP reply: 2xx delivered, 4xx soft, 5xx hard only for dead addresses."""
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
    return classify_failure(status=enhanced, reply_code=code, text=text, temporary=temporary)
