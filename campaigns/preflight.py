"""Pre-flight check: render a random sample of recipients and report what would go wrong."""

from __future__ import annotations

import enum
import html as html_lib
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from html.parser import HTMLParser

from django.conf import settings

from campaigns.models import Campaign, Template
from contacts.models import Contact, ContactStatus, Subscription, SubscriptionStatus
from contacts.selectors import contacts_by_keys
from delivery import selectors as delivery_selectors
from delivery import tokens
from mailkit.compose import Composer, MessageSpec, make_message_id, validate_address
from mailkit.dkim import DkimSigner
from mailkit.errors import DeliveryError, DkimError, InvalidAddressError, TemplateError
from mailkit.render import (
    CompiledTemplates,
    TemplateSource,
    compile_templates,
    contact_context,
    render_content,
    template_variables,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BUILTIN_VARIABLES",
    "GMAIL_CLIP_BYTES",
    "Finding",
    "Level",
    "PreflightReport",
    "SampleContact",
    "MessagePreview",
    "campaign_preflight",
    "campaign_preview",
    "find_contact",
    "message_preview",
    "template_preview",
    "preview_context",
    "sample_contacts",
]

# Gmail hides everything after the first ~102 KB of a message's HTML behind "View entire message"
# (and with it, usually, the unsubscribe link and the open pixel).
GMAIL_CLIP_BYTES = 102 * 1024

# What every message's context holds besides the contact's own fields (PreparedCampaign.envelope).
BUILTIN_VARIABLES = frozenset(
    {"email", "name", "first_name", "contact", "unsubscribe_url", "campaign_name"}
)

_LINK_SCHEMES = ("http://", "https://", "mailto:", "tel:")
_MAX_EXAMPLES = 5


class Level(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    level: Level
    code: str
    message: str


@dataclass(frozen=True)
class PreflightReport:
    findings: tuple[Finding, ...]
    recipients: int = 0  # active, subscribed contacts of the target lists
    sampled: int = 0
    max_html_bytes: int = 0
    variables: tuple[str, ...] = ()

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == Level.ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == Level.WARNING]

    @property
    def ok(self) -> bool:
        """True when nothing stops the send (warnings may remain)."""
        return not self.errors

    def codes(self) -> list[str]:
        return [f.code for f in self.findings]


@dataclass(frozen=True)
class SampleContact:
    contact_id: int
    email: str
    name: str
    attributes: dict = field(default_factory=dict)


def _targets(campaign: Campaign) -> tuple[list[int], list]:
    """The campaign's target list ids and segments (read once for a window's ranges)."""
    if not campaign.pk:
        return [], []
    return list(campaign.lists.values_list("id", flat=True)), list(campaign.segments.all())


def _recipients(
    campaign: Campaign,
    *,
    ids: tuple[int, int] | None = None,
    targets: tuple[list[int], list] | None = None,
):
    """Active contacts that are subscribed to a target list or match a target segment.

    ``ids`` (low, high), both included: only contacts in that id range, with the range also
    inside each subquery, so that a window reads that range and never a whole list.
    ``targets``: the campaign's `_targets`, when the caller has them already.
    """
    from django.db.models import F, Q

    list_ids, segments = targets if targets is not None else _targets(campaign)
    subscriptions = Subscription.objects.filter(status=SubscriptionStatus.SUBSCRIBED)
    contacts = Contact.objects.all()
    if ids is not None:
        subscriptions = subscriptions.filter(contact_id__gte=ids[0], contact_id__lte=ids[1])
        contacts = contacts.filter(id__range=ids)
    condition = Q()
    if list_ids and ids is None:
        condition |= Q(
            id__in=subscriptions.filter(contact_list_id__in=list_ids).values("contact_id")
        )
    elif list_ids:
        # Compared as `contact_list_id + 0`, so that the list can never lead the look-up: on
        # statistics older than a large insert the planner took the (list, status) index and
        # read every member of the list to keep those in the range.
        members = subscriptions.annotate(list_key=F("contact_list_id") + 0)
        condition |= Q(id__in=members.filter(list_key__in=list_ids).values("contact_id"))
    for segment in segments:
        matching = segment.contacts()
        if ids is not None:
            matching = matching.filter(id__range=ids)
        condition |= Q(id__in=matching.values("id"))
    if not condition:
        return Contact.objects.none()
    return contacts.filter(condition, status=ContactStatus.ACTIVE)


def sample_contacts(campaign: Campaign, *, size: int) -> list[SampleContact]:
    """A uniformly random sample of the campaign's active recipients (lists and segments).

    ORDER BY RANDOM() scans the target once (a top-N sort, no full sort): fine for a check a
    person starts, not for the send path.
    """
    rows = (
        _recipients(campaign).order_by("?").values_list("id", "email", "name", "attributes")[:size]
    )
    return [SampleContact(cid, email, name or "", attrs or {}) for cid, email, name, attrs in rows]


# Contact ids read by the first step of a window; each step reads twice as many as the one
# before, so a sparse audience (a small list among many contacts) takes few steps.
_WINDOW_FIRST_STEP = 2000


def _sample_window(campaign: Campaign, *, size: int) -> list[SampleContact]:
    """``size`` recipients in id order from a random point of the audience (wrapping round),
    for the check at Send, on the critical path.

    Read in ranges of contact ids that double at each step, each range bounding the list
    look-up too: the time depends on how far the next ``size`` recipients are, never on the
    size of the lists (a plain `id IN (list members)` read every member of a 200,000-contact
    list, 0.3-2 s). A uniform sample (ORDER BY RANDOM()) reads the whole audience.
    """
    from django.db.models import Max, Min

    bounds = Contact.objects.aggregate(low=Min("id"), high=Max("id"))  # two index probes
    low, high = bounds["low"], bounds["high"]
    if low is None:
        return []
    start = random.randint(low, high)  # noqa: S311 - not security
    fields = ("id", "email", "name", "attributes")
    targets = _targets(campaign)
    rows: list[tuple] = []
    # From the random point to the end, then from the start up to the random point.
    for first, last in ((start, high), (low, start - 1)):
        step = _WINDOW_FIRST_STEP
        while first <= last and len(rows) < size:
            upper = min(first + step - 1, last)
            window = _recipients(campaign, ids=(first, upper), targets=targets).order_by("id")
            rows += window.values_list(*fields)[: size - len(rows)]
            first, step = upper + 1, step * 2
    return [SampleContact(cid, email, name or "", attrs or {}) for cid, email, name, attrs in rows]


def _recipient_count(campaign: Campaign) -> int:
    return _recipients(campaign).count()


def _segment_problems(campaign: Campaign) -> list[str]:
    from contacts.segments import SegmentRuleError, rules_validate

    problems = []
    for segment in campaign.segments.all() if campaign.pk else ():
        try:
            rules_validate(segment.rules, match=segment.match)
        except SegmentRuleError as exc:
            problems.append(f"Segment {segment.name!r} has invalid rules: {exc}")
    return problems


def preview_context(campaign_name: str, contact: SampleContact, *, unsubscribe_url: str) -> dict:
    """The template context of one recipient, as PreparedCampaign.envelope builds it."""
    return contact_context(
        email=contact.email,
        name=contact.name,
        attributes=contact.attributes,
        extra={"unsubscribe_url": unsubscribe_url, "campaign_name": campaign_name},
    )


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("a", "area"):
            for name, value in attrs:
                if name == "href":
                    self.hrefs.append(value or "")


def link_problem(href: str) -> str:
    """Why a rendered href would not work in a mail client, or "" when it is fine."""
    href = html_lib.unescape(href).strip()
    if "{{" in href or "}}" in href or "{%" in href:
        return "contains an unrendered template tag"
    if not href:
        return "is empty"
    if any(c.isspace() for c in href):
        return "contains spaces"
    if href.startswith("#"):
        return ""  # an anchor within the message
    if not href.lower().startswith(_LINK_SCHEMES):
        return "is not an http(s), mailto or tel link"
    if href.lower() in _LINK_SCHEMES:
        return "has nothing after the scheme"
    return ""


# Most providers refuse messages over 25 MB (attachments grow by a third in base64).
ATTACHMENTS_WARN_BYTES = 10 * 1024 * 1024


def _check_attachments(campaign: Campaign, html: str, add) -> None:
    """Inline images the HTML points at but nobody attached, and heavy attachments."""
    if not campaign.pk:
        return
    attachments = list(campaign.attachments.all())
    content_ids = {a.content_id for a in attachments if a.content_id}
    for cid in sorted(set(re.findall(r"""cid:([^"'\s>)]+)""", html)) - content_ids):
        add(
            Level.ERROR,
            "cid_missing",
            f'The HTML shows the image "cid:{cid}", but no attachment has that Content-ID.',
        )
    total = 0
    for attachment in attachments:
        try:
            total += attachment.file.size
        except OSError:
            add(Level.ERROR, "attachment_missing", f"The attachment {attachment} cannot be read.")
    if total > ATTACHMENTS_WARN_BYTES:
        add(
            Level.WARNING,
            "attachments_large",
            f"The attachments weigh {total / 1024 / 1024:.1f} MB in every message: many "
            "providers refuse messages over 25 MB, and large mailings look like spam. Link to "
            "the files instead.",
        )


def campaign_preflight(
    campaign: Campaign, *, sample_size: int = 50, at_send: bool = False
) -> PreflightReport:
    """Everything we can know before the first message: errors stop a send, warnings do not.

    ``at_send``: the check the Send button runs, on the critical path of a large audience:
    it asks whether anyone is targeted rather than counting them (the report's recipients
    is then 0 or 1) and samples a window of the audience from a random point rather than
    the whole audience uniformly. The same checks; the recipients rendered are consecutive
    ones rather than spread over the audience.
    """
    findings: list[Finding] = []

    def add(level: Level, code: str, message: str) -> None:
        findings.append(Finding(level, code, message))

    subject, html, text = campaign.content()
    _check_attachments(campaign, html, add)
    # From
    from_domain = ""
    try:
        from_domain = validate_address(campaign.from_email).rpartition("@")[2].lower()
    except InvalidAddressError as exc:
        add(Level.ERROR, "from_invalid", f"The From address is missing or invalid ({exc}).")
    if campaign.reply_to:
        try:
            validate_address(campaign.reply_to)
        except InvalidAddressError as exc:
            add(Level.ERROR, "reply_to_invalid", f"The Reply-To address is invalid ({exc}).")
    # Recipients
    recipients = 0
    segment_problems = _segment_problems(campaign)
    for problem in segment_problems:
        add(Level.ERROR, "segment_invalid", problem)
    if not campaign.pk or not (campaign.lists.exists() or campaign.segments.exists()):
        add(Level.ERROR, "no_lists", "The campaign targets no list and no segment.")
    elif not segment_problems:
        if at_send:
            # Anyone targeted: the window of recipients rendered below answers it too.
            window = _sample_window(campaign, size=max(1, sample_size))
            recipients = int(bool(window))
        else:
            recipients = _recipient_count(campaign)
        if not recipients:
            add(
                Level.ERROR,
                "no_recipients",
                "The target lists and segments have no active, subscribed contact: nobody "
                "would receive it.",
            )
    # DKIM
    if from_domain:
        try:
            signer = delivery_selectors.dkim_signer_for(from_domain)
        except DkimError as exc:
            add(Level.ERROR, "dkim_key_unusable", f"The DKIM key of {from_domain} fails: {exc}")
        else:
            if signer is None:
                add(
                    Level.WARNING,
                    "no_dkim_key",
                    f"{from_domain} has no enabled DKIM key, so messages go out unsigned and "
                    "Gmail, Yahoo and Outlook are likely to file them as spam. Create one under "
                    f"Delivery > DKIM keys or with `python manage.py dkim_keygen {from_domain}`, "
                    "then publish the TXT record it shows.",
                )
    # Content
    if not subject.strip():
        add(Level.ERROR, "subject_empty", "The subject is empty.")
    if not html.strip() and not text.strip():
        add(Level.ERROR, "content_empty", "The message has neither HTML nor text.")
        return PreflightReport(tuple(findings), recipients=recipients)
    source = TemplateSource(subject=subject, html=html, text=text)
    try:
        variables = template_variables(source)
        compiled = compile_templates(source)
    except TemplateError as exc:
        add(Level.ERROR, "template_error", f"Template error in {exc}")
        return PreflightReport(tuple(findings), recipients=recipients)
    body_variables = (
        template_variables(TemplateSource(subject="", html=html))
        if html.strip()
        else template_variables(TemplateSource(subject="", html="", text=text))
    )
    if "unsubscribe_url" not in body_variables:
        where = "HTML" if html.strip() else "text"
        add(
            Level.ERROR,
            "no_unsubscribe_link",
            f"The {where} has no unsubscribe link: add "
            '<a href="{{ unsubscribe_url }}">Unsubscribe</a>. The List-Unsubscribe header '
            "alone is not shown by every client, and the law (CAN-SPAM, GDPR) and Gmail's and "
            "Yahoo's sender rules ask for a visible one.",
        )
    composer = None
    if from_domain:
        try:
            # The same headers campaign_prepare writes, so a bad List-Id shows up here too.
            from campaigns.sending.prepare import campaign_list_id

            list_id = campaign_list_id(campaign, from_domain)
            composer = Composer(
                MessageSpec(
                    from_email=campaign.from_email,
                    from_name=campaign.from_name,
                    reply_to=campaign.reply_to,
                    list_id=list_id if recipients else "",
                    campaign_id=campaign.pk,
                )
            )
        except DeliveryError as exc:
            add(Level.ERROR, "headers_invalid", f"The message headers cannot be written: {exc}")
    # Sample
    if not recipients:
        samples = []
    elif at_send:
        samples = window[:sample_size]
    else:
        samples = sample_contacts(campaign, size=sample_size)
    max_html = _render_sample(campaign, compiled, composer, samples, add)
    _check_variables(variables, samples, add)
    if max_html > GMAIL_CLIP_BYTES:
        add(
            Level.WARNING,
            "html_clipped",
            f"The HTML is up to {max_html / 1024:.0f} KB: Gmail clips messages over 102 KB "
            "and hides the rest (often the unsubscribe link) behind 'View entire message'. "
            "Shorten it or move images and styles out.",
        )
    if samples:
        add(
            Level.INFO,
            "sampled",
            (
                f"Rendered {len(samples)} recipients from a random point of the audience; "
                if at_send
                else f"Rendered {len(samples)} random recipients of {recipients}; "
            )
            + f"largest HTML {max_html / 1024:.1f} KB.",
        )
    return PreflightReport(
        tuple(findings),
        recipients=recipients,
        sampled=len(samples),
        max_html_bytes=max_html,
        variables=tuple(sorted(variables)),
    )


def _render_sample(campaign, compiled: CompiledTemplates, composer, samples, add) -> int:
    """Render (and compose) every sampled contact; returns the largest HTML in bytes."""
    max_html = 0
    failures: Counter[str] = Counter()
    first_failure: dict[str, int] = {}
    bad_links: dict[tuple[str, str], int] = {}
    unrendered = 0
    for contact in samples:
        context = preview_context(
            campaign.name, contact, unsubscribe_url="https://preflight.invalid/u/token/"
        )
        try:
            content = render_content(compiled, context)
        except TemplateError as exc:
            failures[str(exc)] += 1
            first_failure.setdefault(str(exc), contact.contact_id)
            continue
        max_html = max(max_html, len(content.html.encode("utf-8")))
        if "{{" in content.html or "{%" in content.html:
            unrendered += 1
        parser = _Links()
        parser.feed(content.html)
        for href in dict.fromkeys(parser.hrefs):
            problem = link_problem(href)
            if problem:
                bad_links[(href, problem)] = bad_links.get((href, problem), 0) + 1
        if composer is not None:
            try:
                composer.compose(
                    to_email=contact.email,
                    to_name=contact.name,
                    content=content,
                    message_id="<preflight@preflight.invalid>",
                )
            except InvalidAddressError:
                pass  # one bad address fails that delivery only; the import should have caught it
            except DeliveryError as exc:
                failures[f"composing: {exc}"] += 1
                first_failure.setdefault(f"composing: {exc}", contact.contact_id)
    for problem, count in failures.items():
        add(
            Level.ERROR,
            "render_error",
            f"Rendering fails for {count} of {len(samples)} sampled contacts "
            f"(first: contact #{first_failure[problem]}): {problem}",
        )
    for (href, problem), count in list(bad_links.items())[:_MAX_EXAMPLES]:
        shown = href if len(href) <= 120 else href[:117] + "..."
        add(
            Level.WARNING,
            "malformed_link",
            f"The link {shown!r} {problem} (in {count} of {len(samples)} sampled messages).",
        )
    if len(bad_links) > _MAX_EXAMPLES:
        add(
            Level.WARNING,
            "malformed_link",
            f"... and {len(bad_links) - _MAX_EXAMPLES} more malformed links.",
        )
    if unrendered:
        add(
            Level.WARNING,
            "unrendered_tag",
            f"'{{{{' or '{{%' is left in the rendered HTML of {unrendered} of {len(samples)} "
            "sampled messages: a tag is escaped, in a {% raw %} block or comes from a contact "
            "value.",
        )
    return max_html


def _check_variables(variables: set[str], samples: list[SampleContact], add) -> None:
    for variable in sorted(variables - BUILTIN_VARIABLES):
        lacking = sum(1 for s in samples if variable not in s.attributes)
        if not samples or lacking == len(samples):
            add(
                Level.WARNING,
                "unknown_variable",
                f"{{{{ {variable} }}}} is neither a contact field nor an attribute of "
                f"{'any' if samples else 'the'} sampled contact"
                f"{'s' if len(samples) != 1 else ''} ({lacking} of {len(samples)} lack it): "
                f"it renders empty. Check the spelling, or give a fallback: "
                f"{{{{ {variable} | default('...') }}}}.",
            )
        elif lacking:
            add(
                Level.INFO,
                "variable_missing",
                f"{lacking} of {len(samples)} sampled contacts lack {{{{ {variable} }}}}: it "
                f"renders empty for them unless the template gives a default.",
            )


# --------------------------------------------------------------------------------------------
# Preview: one recipient's message exactly as the workers would build it


@dataclass(frozen=True)
class MessagePreview:
    contact: SampleContact
    subject: str
    html: str
    text: str
    headers: tuple[tuple[str, str], ...]
    size: int  # bytes on the wire, DKIM signature included
    html_bytes: int
    raw: bytes


PLACEHOLDER_CONTACT = SampleContact(0, "preview@example.com", "Preview Contact", {})


def find_contact(query: str) -> SampleContact | None:
    """A contact by id ("42", "#42") or by email (any case)."""
    query = query.strip().lstrip("#")
    if not query:
        return None
    rows = Contact.objects.filter(id=int(query)) if query.isdigit() else None
    if rows is None:
        rows = contacts_by_keys([query.lower()])
    row = rows.values_list("id", "email", "name", "attributes").first()
    return SampleContact(row[0], row[1], row[2] or "", row[3] or {}) if row else None


def random_contact() -> SampleContact | None:
    """Any active contact, for previewing a template that has no campaign yet."""
    row = (
        Contact.objects.filter(status=ContactStatus.ACTIVE)
        .order_by("?")
        .values_list("id", "email", "name", "attributes")
        .first()
    )
    return SampleContact(row[0], row[1], row[2] or "", row[3] or {}) if row else None


def message_preview(
    *,
    compiled: CompiledTemplates,
    composer: Composer,
    signer: DkimSigner | None,
    campaign_name: str,
    contact: SampleContact,
    to_email: str = "",
    subject_prefix: str = "",
) -> MessagePreview:
    """Render, compose and sign one message; raises TemplateError or DeliveryError."""
    # A test or preview has no delivery: id 0, whose unsubscribe token matches nothing.
    unsubscribe = tokens.unsubscribe_url(0)
    content = render_content(
        compiled, preview_context(campaign_name, contact, unsubscribe_url=unsubscribe)
    )
    if subject_prefix:
        content = replace(content, subject=subject_prefix + content.subject)
    raw = composer.compose(
        to_email=to_email or contact.email,
        to_name=contact.name,
        content=content,
        message_id=make_message_id(domain=composer.domain),
        unsubscribe_url=unsubscribe,
    )
    if signer is not None:
        raw = signer.sign(raw)
    parsed = BytesHeaderParser(policy=default_policy).parsebytes(raw)
    return MessagePreview(
        contact=contact,
        subject=content.subject,
        html=content.html,
        text=content.text,
        headers=tuple((name, str(value)) for name, value in parsed.items()),
        size=len(raw),
        html_bytes=len(content.html.encode("utf-8")),
        raw=raw,
    )


def campaign_preview(
    campaign: Campaign,
    *,
    contact: SampleContact | None = None,
    to_email: str = "",
    subject_prefix: str = "",
) -> MessagePreview:
    """The campaign's message for one contact (a random recipient when none is given)."""
    from campaigns.sending.prepare import campaign_prepare

    if contact is None:
        sample = sample_contacts(campaign, size=1)
        contact = sample[0] if sample else PLACEHOLDER_CONTACT
    prepared = campaign_prepare(campaign)
    return message_preview(
        compiled=prepared.compiled,
        composer=prepared.composer,
        signer=prepared.signer,
        campaign_name=campaign.name,
        contact=contact,
        to_email=to_email,
        subject_prefix=subject_prefix,
    )


def template_preview(template: Template, *, contact: SampleContact | None = None) -> MessagePreview:
    """A template rendered for one contact (any active contact when none is given)."""
    contact = contact or random_contact() or PLACEHOLDER_CONTACT
    compiled = compile_templates(
        TemplateSource(subject=template.subject, html=template.html, text=template.text)
    )
    composer = Composer(MessageSpec(from_email=settings.EDM_DEFAULT_FROM_EMAIL))
    return message_preview(
        compiled=compiled,
        composer=composer,
        signer=None,
        campaign_name=template.name,
        contact=contact,
    )
