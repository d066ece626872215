"""The classifier's phrase tables and the compiled rulebook the classifier reads them from."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from .kinds import BounceReason

R = BounceReason

# Server texts, tried in order: the first match wins. The order matters where words overlap:
# "mailbox full" and "size limit" come before "user unknown"; specific blocks (spam, DMARC)
# before the address checks; the vague words ("rejected", "denied") last.
TEXT_RULES: tuple[tuple[BounceReason, str], ...] = (
    (
        R.MAILBOX_FULL,
        r"mailbox (?:is )?full|mailbox (?:is )?over ?quota|over ?quota|quota (?:exceeded|exceed)"
        r"|exceeded (?:the |his |her |its )?(?:storage|quota|mailbox)|mail ?box size limit"
        r"|mailfolder is full|full mailbox|mailbox (?:has )?exceeded|exceeds? (?:the )?quota"
        r"|disk quota|insufficient (?:mailbox )?(?:space|storage)|not enough (?:storage|space)"
        r"|mailbox is (?:currently )?(?:too )?full|recipient'?s? (?:mailbox|inbox) is full"
        r"|user has exceeded|mailbox for user is full|no space left|is full and cannot"
        r"|storage (?:limit|quota)|inbox is full|account is full|over the allowed quota"
        r"|quota_exceeded|mbox full|maildir over quota|user over quota"
        r"|too much mail data"  # NTT docomo's 552
        # Chinese and Japanese: "mailbox full", "space/capacity exceeded".
        r"|邮箱(?:已满|空间不足|容量不足)|(?:空间|容量)(?:已满|不足|超限)|超出(?:邮箱)?(?:容量|配额)"
        r"|容量(?:超過|オーバー|が(?:いっぱい|一杯|不足))|容量を超え|メールボックスが(?:いっぱい|一杯|満杯)",
    ),
    (
        R.MESSAGE_TOO_LARGE,
        r"message (?:is )?too (?:large|big)|too (?:large|big) (?:message|for)"
        r"|message size (?:exceeds|limit)|size (?:exceeds|limit exceeded)|exceeds? (?:the )?"
        r"(?:maximum|max|fixed maximum|size limit|message size)|message file too big"
        r"|message length exceeds|maximum (?:message )?size|larger than (?:the )?(?:maximum|"
        r"allowed)|mail ?size limit|邮件(?:过大|太大|大小超)|サイズ(?:が大きすぎ|超過|制限)",
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
        r"|ip (?:address )?(?:has been |is )?blocked|blocked using|\bphish"
        r"|\bdt:spm\b"  # NetEase (163/126/yeah): "554 DT:SPM ...", content judged spam
        r"|垃圾邮件|反垃圾|迷惑メール",
    ),
    (
        R.RATE_LIMITED,
        r"too many (?:connections|messages|recipients|mails|emails|concurrent|sessions|errors)"
        r"|rate limit|ratelimit|rate of|throttl|sending (?:rate|limit)|exceeded (?:the )?(?:rate|"
        r"sending|message) limit|too fast|too frequently|try (?:again )?later|connection limit"
        r"|temporarily deferred|frequency limit|speed limit|exceeded .{0,40}limit"
        r"|receiving mail at a rate|频率|过于频繁|发送(?:过多|超限)|頻度",
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
        r"denied|unknown|invalid|refused|blocked|not (?:exist|allowed|permitted))",
    ),
    (
        # Evidence of a filter the recipient set (the address is alive and chose to refuse).
        R.FILTERED,
        r"recipient'?s? (?:preferences|filters?|rules)|(?:rejected|refused|blocked) by (?:the )?"
        r"recipient|recipient (?:has )?(?:rejected|blocked|refused)"
        r"|only accepts? (?:e-?mail|mail|messages) from",
    ),
    (
        R.MAILBOX_SUSPENDED,
        r"suspended|temporar(?:il)?y? (?:disabled|inactive|unavailable|locked|blocked)"
        r"|mailbox is inactive|account is inactive|inactive (?:account|user|mailbox)|is frozen"
        r"|(?:account|mailbox|user|address|compte)(?: has been| is| was)?(?: temporar(?:il)?y)?"
        r" (?:disabled|deactivated|discontinued|locked|blocked|bloque)"
        r"|disabled (?:recipient|account|mailbox|user)|is (?:now )?disabled|been disabled|recipient suspend"
        r"|(?:被|已被|已)(?:冻结|禁用|停用|锁定)|(?:帐号|账号|账户|邮箱)(?:冻结|停用|禁用)|利用停止",
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
        r"|recipient domain .{0,40} (?:not|invalid)|hostname .{0,40} not found"
        r"|域名(?:不存在|无效|错误)|找不到(?:域名|主机)|ドメイン.{0,20}(?:存在しません|見つかりません)",
    ),
    (
        R.UNKNOWN_USER,
        r"user unknown|unknown user|no such (?:user|mailbox|recipient|account|person|address|"
        r"local user)|recipient (?:address )?unknown|unknown (?:recipient|local[- ]part|address|"
        r"mailbox|alias|or illegal alias)|(?:mailbox|user|recipient|account|address|addressee)"
        r"(?: name)? (?:not found|unknown|does ?n[o']t exist|not exist|is not (?:valid|known|"
        r"a valid)|not valid|not listed|is unknown|invalid)|does not exist|doesn'?t exist"
        r"|(?<!may )(?<!might )not exist|nonexist|non-exist|invalid (?:recipient|mailbox|user|address|account)"
        r"|not a valid (?:recipient|mailbox|user|address)|no mailbox|mailbox unavailable"
        r"|mailbox not available|recipnotfound|recipient ?not ?found|address not found"
        r"|user not found|bad destination mailbox|not a known user|no valid recipients"
        r"|undeliverable address|doesn'?t have an? .{0,40} account|not our customer"
        r"|no account by that name|unknown or invalid|addressee unknown|rejected: user"
        r"|unknown in (?:local|virtual|relay) recipient table|not listed in|no such(?! file)"
        r"|not a recipient|invalid address|destination address rejected|not our user"
        r"|recipient address rejected: access denied|directory lookup"
        r"|check if (?:the )?address is correct"  # Trend Micro InterScan
        # Japanese: "(user|address) ... not found / does not exist".
        r"|(?:ユーザー?|宛先|アドレス|受信者).{0,80}(?:見つかりません|存在しません)|宛先不明"
        # Chinese: "(user|recipient|account|mailbox|address) does not exist / not found".
        r"|(?:用户|收件人|收信人|帐号|账号|账户|帐户|邮箱|地址)(?:名)?(?:不存在|无效|未找到|找不到)"
        r"|查无此(?:人|用户)",
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
        r"|syntax error|bad command|line too long|forbidden content|prohibited"
        r"|inappropriate (?:words|content)|内容(?:违规|不合法|被拒)",
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
        r"|prohibit|forbidden|filter|restricted|not welcome|banned|access|reject|拒收|拒绝|拒否",
    ),
)

# Definite directory answers: a mailbox server's own lookup, not a gateway's words.
DIRECTORY_MISS = (
    r"\(000c05a6\)"  # Exchange 2000/2003 MSEXCH:IMS "Unknown Recipient" error code
    r"|name (?:&|and) address book|not listed in (?:the )?(?:public )?(?:directory|address)"
    r"|check if (?:the )?address is correct|ディレクトリ"
)

# Phrases that name the refused command without quoting it (RFC 5321 phases).
COMMAND_PHRASES: tuple[tuple[str, str], ...] = (
    # qmail-remote: "... does not like recipient." is its RCPT TO refusal.
    ("RCPT", r"does not like recipient"),
    ("MAIL", r"does not like sender|but sender was rejected"),
    ("HELO", r"but my name was rejected"),
    ("DATA", r"failed after i sent the message"),
)


def split_alternatives(pattern: str) -> tuple[str, ...]:
    """The top-level alternatives of a regular expression ("a|b(c|d)" -> "a", "b(c|d)")."""
    parts: list[str] = []
    depth = 0
    in_class = False
    start = 0
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            if pattern[index + 1 : index + 2] == "]":
                index += 1  # "[]...]": a leading "]" is a literal
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            parts.append(pattern[start:index])
            start = index + 1
        index += 1
    parts.append(pattern[start:])
    return tuple(part for part in parts if part)


# A phrase is known by its table and its text: ("text:3", "over ?quota").
PhraseKey = tuple[str, str]


class Rulebook:
    """The phrase tables compiled, optionally without some phrases (the leave-one-out)."""

    def __init__(self, *, excluded: frozenset[PhraseKey] = frozenset()) -> None:
        self.excluded = excluded
        self.seen: list[str] | None = None  # texts looked at, when recording (evaluate.py)
        self.text_rules: tuple[tuple[BounceReason, re.Pattern[str], bool], ...] = tuple(
            (reason, pattern, index == len(TEXT_RULES) - 1)
            for index, (reason, source) in enumerate(TEXT_RULES)
            # The classifier lowercases a text before these: no re.I, which costs time.
            if (pattern := self._compile(f"text:{index}", source, flags=0)) is not None
        )
        self.directory_miss = self._compile("directory", DIRECTORY_MISS)
        self.command_phrases: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
            (name, pattern)
            for name, source in COMMAND_PHRASES
            if (pattern := self._compile(f"command:{name}", source)) is not None
        )

    def _compile(self, table: str, source: str, flags: int = re.I) -> re.Pattern[str] | None:
        kept = [p for p in split_alternatives(source) if (table, p) not in self.excluded]
        return re.compile("|".join(kept), flags) if kept else None

    def without(self, excluded: frozenset[PhraseKey]) -> Rulebook:
        """This rulebook with more phrases left out."""
        return Rulebook(excluded=self.excluded | excluded)

    def text_phrases(self) -> Iterator[PhraseKey]:
        """The keys of the text rules' phrases this rulebook keeps."""
        for index, (_, source) in enumerate(TEXT_RULES):
            for phrase in split_alternatives(source):
                if (f"text:{index}", phrase) not in self.excluded:
                    yield (f"text:{index}", phrase)

    def record(self, text: str) -> None:
        if self.seen is not None:
            self.seen.append(text)


def phrases() -> Iterator[tuple[PhraseKey, re.Pattern[str]]]:
    """Every phrase of every table, compiled alone (for counting where each one is found)."""
    tables = [(f"text:{i}", source) for i, (_, source) in enumerate(TEXT_RULES)]
    tables.append(("directory", DIRECTORY_MISS))
    tables.extend((f"command:{name}", source) for name, source in COMMAND_PHRASES)
    for table, source in tables:
        for phrase in split_alternatives(source):
            yield (table, phrase), re.compile(phrase, re.I)


_DEFAULT = Rulebook()
_ACTIVE: ContextVar[Rulebook] = ContextVar("bounce_rulebook", default=_DEFAULT)


def active_rulebook() -> Rulebook:
    """The rulebook the classifier uses now (the full one, except inside `rulebook_in_use`)."""
    return _ACTIVE.get()


@contextmanager
def rulebook_in_use(rulebook: Rulebook) -> Iterator[Rulebook]:
    """Classify with `rulebook` inside the block (the bench's leave-one-source-out runs)."""
    token = _ACTIVE.set(rulebook)
    try:
        yield rulebook
    finally:
        _ACTIVE.reset(token)
