"""Open and click tracking, pure: link discovery, HTML rewriting, tokens and bot heuristics.

Nothing here touches the database. The campaign is instrumented once, before its templates
are compiled: every trackable href becomes ``{{ click_base }}<link token>/`` and the pixel
``{{ open_pixel_url }}`` is placed at the end of the body, so the per-recipient work is only
the substitution of the recipient's own tokens.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from django.core import signing

__all__ = [
    "CLICK_BASE_VAR",
    "OPEN_PIXEL_VAR",
    "Hit",
    "TrackedLink",
    "classify_hits",
    "click_token",
    "find_links",
    "instrument_html",
    "link_token",
    "read_click_token",
    "read_link_token",
    "read_recipient_token",
    "recipient_token",
    "url_hash",
]

CLICK_BASE_VAR = "click_base"
OPEN_PIXEL_VAR = "open_pixel_url"

# An <a ...> start tag's href attribute, quoted with " or '.
_A_HREF = re.compile(
    r"""(?P<head><a\b[^>]*?\bhref\s*=\s*)(?P<q>["'])(?P<url>.*?)(?P=q)""",
    re.IGNORECASE | re.DOTALL,
)
_JINJA = re.compile(r"\{\{|\{%|\{#")
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)

PIXEL_HTML = (
    "{% if " + OPEN_PIXEL_VAR + " %}"
    '<img src="{{ ' + OPEN_PIXEL_VAR + ' }}" width="1" height="1" alt="" '
    'style="display:block;width:1px;height:1px;border:0;margin:0;padding:0">'
    "{% endif %}"
)


def url_hash(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def _trackable(raw: str) -> str | None:
    """The real URL behind an href of the template source, or None when it is not tracked.

    Not tracked: anything but http(s), and personalized hrefs (Jinja in the URL, including
    ``{{ unsubscribe_url }}`` and ``{{ webview_url }}``): their target differs per
    recipient, so it cannot be registered once per campaign.
    """
    if _JINJA.search(raw):
        return None
    url = html.unescape(raw).strip()
    if not url.lower().startswith(("http://", "https://")):
        return None
    return url


def find_links(source: str, *, exclude: Iterable[str] = ()) -> list[str]:
    """The distinct trackable URLs of an HTML template, in order of first appearance."""
    excluded = set(exclude)
    seen: dict[str, None] = {}
    for match in _A_HREF.finditer(source):
        url = _trackable(match.group("url"))
        if url is not None and url not in excluded:
            seen.setdefault(url, None)
    return list(seen)


def instrument_html(source: str, *, link_tokens: Mapping[str, str], pixel: bool = True) -> str:
    """Rewrite registered links to the click endpoint and add the open pixel; once per campaign.

    `link_tokens` maps each registered URL to its link token. Unregistered hrefs stay as they
    are (an unknown link is never redirected).
    """

    def rewrite(match: re.Match[str]) -> str:
        url = _trackable(match.group("url"))
        token = link_tokens.get(url) if url is not None else None
        if token is None:
            return match.group(0)
        quote = match.group("q")
        return f"{match.group('head')}{quote}{{{{ {CLICK_BASE_VAR} }}}}{token}/{quote}"

    result = _A_HREF.sub(rewrite, source)
    if pixel:
        ends = list(_BODY_END.finditer(result))
        if ends:
            cut = ends[-1].start()
            result = result[:cut] + PIXEL_HTML + result[cut:]
        else:
            result += PIXEL_HTML
    return result


# --- tokens --------------------------------------------------------------------------------
# One salt per purpose, like delivery.tokens. Recipient tokens of open, click and web view
# carry a timestamp so they can expire (EDM_TRACKING_TOKEN_DAYS); the unsubscribe token never
# expires (a recipient must always be able to leave).


def _timestamp_signer(purpose: str) -> signing.TimestampSigner:
    return signing.TimestampSigner(salt=f"skylark.{purpose}")


def recipient_token(purpose: str, delivery_id: int) -> str:
    return _timestamp_signer(purpose).sign(str(delivery_id))


def read_recipient_token(purpose: str, token: str, *, max_age_seconds: float) -> int | None:
    """The delivery id of a valid, unexpired token of this purpose, or None."""
    try:
        return int(_timestamp_signer(purpose).unsign(token, max_age=max_age_seconds))
    except (signing.BadSignature, ValueError):
        return None


def click_token(delivery_id: int, campaign_id: int) -> str:
    """The recipient part of a click URL; it names the campaign, so a link token of another
    campaign is refused without a database query."""
    return _timestamp_signer("click").sign(f"{delivery_id}.{campaign_id}")


def read_click_token(token: str, *, max_age_seconds: float) -> tuple[int, int] | None:
    """(delivery id, campaign id) of a valid, unexpired click token, or None."""
    try:
        value = _timestamp_signer("click").unsign(token, max_age=max_age_seconds)
        delivery, _, campaign = value.partition(".")
        return int(delivery), int(campaign)
    except (signing.BadSignature, ValueError):
        return None


def link_token(campaign_id: int, link_id: int) -> str:
    return signing.Signer(salt="skylark.link").sign(f"{campaign_id}.{link_id}")


def read_link_token(token: str) -> tuple[int, int] | None:
    """(campaign id, link id) of a valid link token, or None (forged or tampered)."""
    try:
        campaign, _, link = signing.Signer(salt="skylark.link").unsign(token).partition(".")
        return int(campaign), int(link)
    except (signing.BadSignature, ValueError):
        return None


# --- honest numbers: which hits were machines --------------------------------------------------


@dataclass(frozen=True)
class TrackedLink:
    id: int
    campaign_id: int
    url: str


@dataclass(frozen=True)
class Hit:
    """One request to a tracking endpoint, as buffered (JSON-ready primitives only)."""

    kind: str  # "open" | "click"
    delivery_id: int
    at: float  # Unix time
    user_agent: str = ""
    ip: str = ""
    method: str = "GET"
    link_id: int | None = None
    campaign_id: int | None = None  # of the link, for clicks


# Security scanners, link checkers and image proxies that fetch everything in a message.
_MACHINE_AGENTS = re.compile(
    r"GoogleImageProxy|ggpht\.com|YahooMailProxy|Barracuda|Proofpoint|Mimecast|"
    r"Symantec|MessageLabs|Forcepoint|FireEye|Trend ?Micro|Sophos|Cisco|IronPort|"
    r"Microsoft Office Protocol Discovery|ms-office|SafeLinks|BingPreview|"
    r"Slackbot|facebookexternalhit|Twitterbot|LinkedInBot|WhatsApp|TelegramBot|"
    r"python-requests|python-urllib|curl/|wget|Go-http-client|okhttp|Java/|libwww|"
    r"HeadlessChrome|PhantomJS|\bbot\b|crawler|spider|scanner|preview",
    re.IGNORECASE,
)
# Apple Mail Privacy Protection fetches images through Apple's proxies with a bare
# "Mozilla/5.0" WebKit agent that never names a browser. Its IP ranges are not available
# offline, so the agent pattern plus "within seconds of delivery" is what we can check.
_APPLE_MPP_AGENT = re.compile(
    r"^Mozilla/5\.0$|^Mozilla/5\.0 \(Macintosh;[^)]*\) AppleWebKit/[\d.]+ \(KHTML, like Gecko\)$"
)


@dataclass(frozen=True)
class MachineRules:
    click_after_send_seconds: float = 10.0
    open_after_send_seconds: float = 10.0  # for proxy agents (Apple MPP)
    burst_seconds: float = 1.0
    burst_links: int = 3


def machine_reason(hit: Hit, *, sent_at: float | None, rules: MachineRules = MachineRules()) -> str:
    """Why a single hit looks automated ("" when it looks human); bursts are judged apart."""
    if hit.method == "HEAD":
        return "head request"
    agent = hit.user_agent.strip()
    if not agent:
        return "no user agent"
    if _MACHINE_AGENTS.search(agent):
        return "scanner or proxy user agent"
    since_send = hit.at - sent_at if sent_at is not None else None
    if (
        hit.kind == "click"
        and since_send is not None
        and since_send < rules.click_after_send_seconds
    ):
        return f"click within {rules.click_after_send_seconds:g}s of delivery"
    if (
        hit.kind == "open"
        and _APPLE_MPP_AGENT.match(agent)
        and since_send is not None
        and since_send < rules.open_after_send_seconds
    ):
        return "Apple Mail Privacy Protection prefetch"
    return ""


def classify_hits(
    hits: Sequence[Hit],
    *,
    sent_at: Mapping[int, float | None],
    rules: MachineRules = MachineRules(),
) -> list[str]:
    """A machine reason per hit ("" = human), bursts included: `burst_links` clicks or more of
    one delivery within `burst_seconds`, on more than one link, are all machine (a scanner
    follows every link; a person does not click three times a second)."""
    reasons = [machine_reason(h, sent_at=sent_at.get(h.delivery_id), rules=rules) for h in hits]
    clicks: dict[int, list[int]] = {}
    for index, hit in enumerate(hits):
        if hit.kind == "click":
            clicks.setdefault(hit.delivery_id, []).append(index)
    for indexes in clicks.values():
        if len(indexes) < rules.burst_links:
            continue
        ordered = sorted(indexes, key=lambda i: hits[i].at)
        start = 0
        for end in range(len(ordered)):
            while hits[ordered[end]].at - hits[ordered[start]].at > rules.burst_seconds:
                start += 1
            window = ordered[start : end + 1]
            if len(window) >= rules.burst_links and len({hits[i].link_id for i in window}) > 1:
                for i in window:
                    reasons[i] = reasons[i] or "many links within a second"
    return reasons
