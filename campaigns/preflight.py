"""Pre-flight check: a table of checks that render a sample of recipients and report what would go wrong."""

from __future__ import annotations

import enum
import html as html_lib
import logging
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser

from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from campaigns.models import Campaign
from contacts.models import Contact, ContactStatus, Subscription, SubscriptionStatus
from delivery import selectors as delivery_selectors
from mailkit.compose import Composer, MessageSpec, validate_address
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
    "PREFLIGHT_CHECKS",
    "SampleContact",
    "campaign_preflight",
    "link_problem",
    "preview_context",
    "sample_contacts",
]

# Gmail hides everything after the first ~102 KB of a message's HTML behind "View entire message"
# (and with it, usually, the unsubscribe link and the open pixel).
GMAIL_CLIP_BYTES = 102 * 1024

# What every message's context holds besides the contact's own fields (PreparedCampaign.envelope).
BUILTIN_VARIABLES = frozenset(
    {"email", "name", "first_name", "contact", "unsubscribe_url", "webview_url", "campaign_name"}
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


def preview_context(
    campaign_name: str, contact: SampleContact, *, unsubscribe_url: str, webview_url: str
) -> dict:
    """The template context of one recipient, as PreparedCampaign.envelope builds it."""
    return contact_context(
        email=contact.email,
        name=contact.name,
        attributes=contact.attributes,
        extra={
            "unsubscribe_url": unsubscribe_url,
            "webview_url": webview_url,
            "campaign_name": campaign_name,
        },
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
        return _("contains an unrendered template tag")
    if not href:
        return _("is empty")
    if any(c.isspace() for c in href):
        return _("contains spaces")
    if href.startswith("#"):
        return ""  # an anchor within the message
    if not href.lower().startswith(_LINK_SCHEMES):
        return _("is not an http(s), mailto or tel link")
    if href.lower() in _LINK_SCHEMES:
        return _("has nothing after the scheme")
    return ""


# Most providers refuse messages over 25 MB (attachments grow by a third in base64).
ATTACHMENTS_WARN_BYTES = 10 * 1024 * 1024


@dataclass
class _Run:
    """One pre-flight: the campaign, its content, and what the checks so far have found.

    The checks of PREFLIGHT_CHECKS run in order and read what earlier ones left here (the
    From domain, the recipients, the compiled templates, the sample).
    """

    campaign: Campaign
    sample_size: int
    at_send: bool
    subject: str
    html: str
    text: str
    findings: list[Finding] = field(default_factory=list)
    from_domain: str = ""
    segments_valid: bool = True
    recipients: int = 0
    window: list[SampleContact] = field(default_factory=list)
    compiled: CompiledTemplates | None = None
    variables: set[str] = field(default_factory=set)
    composer: Composer | None = None
    samples: list[SampleContact] = field(default_factory=list)
    max_html: int = 0
    # Set by a check after which nothing more can be known (no content, a template that does
    # not compile): the report then holds the findings so far and the recipients.
    stopped: bool = False

    def add(self, level: Level, code: str, message: str) -> None:
        self.findings.append(Finding(level, code, message))


PreflightCheck = Callable[[_Run], None]


def _check_attachments(run: _Run) -> None:
    """Inline images the HTML points at but nobody attached, and heavy attachments."""
    if not run.campaign.pk:
        return
    attachments = list(run.campaign.attachments.all())
    content_ids = {a.content_id for a in attachments if a.content_id}
    for cid in sorted(set(re.findall(r"""cid:([^"'\s>)]+)""", run.html)) - content_ids):
        run.add(
            Level.ERROR,
            "cid_missing",
            _('The HTML shows the image "cid:%(cid)s", but no attachment has that Content-ID.')
            % {"cid": cid},
        )
    total = 0
    for attachment in attachments:
        try:
            total += attachment.file.size
        except OSError:
            run.add(
                Level.ERROR,
                "attachment_missing",
                _("The attachment %(name)s cannot be read.") % {"name": attachment},
            )
    if total > ATTACHMENTS_WARN_BYTES:
        run.add(
            Level.WARNING,
            "attachments_large",
            _(
                "The attachments weigh %(size)s MB in every message: many providers refuse "
                "messages over 25 MB, and large mailings look like spam. Link to the files "
                "instead."
            )
            % {"size": f"{total / 1024 / 1024:.1f}"},
        )


def _validated(address: str) -> tuple[str, str]:
    """The address as validate_address returns it and "", or "" and why it is invalid."""
    try:
        return validate_address(address), ""
    except InvalidAddressError as exc:
        return "", str(exc)


def _check_from(run: _Run) -> None:
    """A valid From address; its domain is what DKIM and the List-Id use."""
    address, error = _validated(run.campaign.from_email)
    run.from_domain = address.rpartition("@")[2].lower()
    if error:
        message = _("The From address is missing or invalid (%(error)s).") % {"error": error}
        run.add(Level.ERROR, "from_invalid", message)


def _check_reply_to(run: _Run) -> None:
    error = _validated(run.campaign.reply_to)[1] if run.campaign.reply_to else ""
    if error:
        message = _("The Reply-To address is invalid (%(error)s).") % {"error": error}
        run.add(Level.ERROR, "reply_to_invalid", message)


def _check_segments(run: _Run) -> None:
    """Every target segment's rules compile (the audience cannot be read otherwise)."""
    from contacts.segments import SegmentRuleError, rules_validate

    for segment in run.campaign.segments.all() if run.campaign.pk else ():
        try:
            rules_validate(segment.rules, match=segment.match)
        except SegmentRuleError as exc:
            run.segments_valid = False
            run.add(
                Level.ERROR,
                "segment_invalid",
                _("Segment %(name)s has invalid rules: %(error)s")
                % {"name": repr(segment.name), "error": exc},
            )


def _check_recipients(run: _Run) -> None:
    """Someone is targeted: counted, or at Send, answered by the window rendered later."""
    campaign = run.campaign
    if not campaign.pk or not (campaign.lists.exists() or campaign.segments.exists()):
        run.add(Level.ERROR, "no_lists", _("The campaign targets no list and no segment."))
        return
    if not run.segments_valid:
        return
    if run.at_send:
        run.window = _sample_window(campaign, size=max(1, run.sample_size))
        run.recipients = int(bool(run.window))
    else:
        run.recipients = _recipient_count(campaign)
    if not run.recipients:
        run.add(
            Level.ERROR,
            "no_recipients",
            _(
                "The target lists and segments have no active, subscribed contact: nobody "
                "would receive it."
            ),
        )


def _check_dkim(run: _Run) -> None:
    """The From domain has a DKIM key that signs (unsigned mail is a warning, not an error)."""
    if not run.from_domain:
        return
    try:
        signer = delivery_selectors.dkim_signer_for(run.from_domain)
    except DkimError as exc:
        run.add(
            Level.ERROR,
            "dkim_key_unusable",
            _("The DKIM key of %(domain)s fails: %(error)s")
            % {"domain": run.from_domain, "error": exc},
        )
        return
    if signer is None:
        run.add(
            Level.WARNING,
            "no_dkim_key",
            _(
                "%(domain)s has no enabled DKIM key, so messages go out unsigned and Gmail, "
                "Yahoo and Outlook are likely to file them as spam. Create one under Delivery > "
                "DKIM keys or with `python manage.py dkim_keygen %(domain)s`, then publish the "
                "TXT record it shows."
            )
            % {"domain": run.from_domain},
        )


def _check_subject(run: _Run) -> None:
    if not run.subject.strip():
        run.add(Level.ERROR, "subject_empty", _("The subject is empty."))


def _check_content(run: _Run) -> None:
    """HTML or text to send; without either nothing further can be checked."""
    if not run.html.strip() and not run.text.strip():
        run.add(Level.ERROR, "content_empty", _("The message has neither HTML nor text."))
        run.stopped = True


def _check_templates(run: _Run) -> None:
    """The templates compile; the variables they use are kept for the sample's checks."""
    source = TemplateSource(subject=run.subject, html=run.html, text=run.text)
    try:
        variables = template_variables(source)
        run.compiled = compile_templates(source)
    except TemplateError as exc:
        run.add(Level.ERROR, "template_error", _("Template error in %(error)s") % {"error": exc})
        run.stopped = True
        return
    run.variables = variables


def _check_unsubscribe_link(run: _Run) -> None:
    """The body (the HTML, or the text when there is no HTML) links to the unsubscribe page."""
    html = run.html.strip()
    if html:
        body = TemplateSource(subject="", html=run.html)
    else:
        body = TemplateSource(subject="", html="", text=run.text)
    if "unsubscribe_url" in template_variables(body):
        return
    run.add(
        Level.ERROR,
        "no_unsubscribe_link",
        _(
            '%(part)s has no unsubscribe link: add <a href="{{ unsubscribe_url }}">'
            "Unsubscribe</a>. The List-Unsubscribe header alone is not shown by every client, "
            "and the law (CAN-SPAM, GDPR) and Gmail's and Yahoo's sender rules ask for a "
            "visible one."
        )
        % {"part": _("The HTML") if html else _("The text")},
    )


def _check_headers(run: _Run) -> None:
    """The headers campaign_prepare writes can be written, so a bad List-Id shows up here."""
    if not run.from_domain:
        return
    from campaigns.sending.prepare import campaign_list_id

    campaign = run.campaign
    try:
        list_id = campaign_list_id(campaign, run.from_domain)
        run.composer = Composer(
            MessageSpec(
                from_email=campaign.from_email,
                from_name=campaign.from_name,
                reply_to=campaign.reply_to,
                list_id=list_id if run.recipients else "",
                campaign_id=campaign.pk,
            )
        )
    except DeliveryError as exc:
        run.add(
            Level.ERROR,
            "headers_invalid",
            _("The message headers cannot be written: %(error)s") % {"error": exc},
        )


def _check_sample(run: _Run) -> None:
    """Render (and compose) every sampled recipient: the window at Send, else a random few."""
    if not run.recipients:
        run.samples = []
    elif run.at_send:
        run.samples = run.window[: run.sample_size]
    else:
        run.samples = sample_contacts(run.campaign, size=run.sample_size)
    assert run.compiled is not None  # _check_templates stops the run otherwise
    run.max_html = _render_sample(run, run.compiled)


def _check_variables(run: _Run) -> None:
    """Variables that no sampled contact has (a typo?) or that some lack (empty for them)."""
    samples = run.samples
    total = len(samples)
    for variable in sorted(run.variables - BUILTIN_VARIABLES):
        lacking = sum(1 for s in samples if variable not in s.attributes)
        values = {"variable": variable, "lacking": lacking, "total": total}
        if not samples or lacking == total:
            run.add(Level.WARNING, "unknown_variable", _unknown_variable_message(values))
        elif lacking:
            run.add(
                Level.INFO,
                "variable_missing",
                _(
                    "%(lacking)d of %(total)d sampled contacts lack {{ %(variable)s }}: it "
                    "renders empty for them unless the template gives a default."
                )
                % values,
            )


def _unknown_variable_message(values: dict) -> str:
    if not values["total"]:
        message = _(
            "{{ %(variable)s }} is neither a contact field nor an attribute of the sampled "
            "contacts (%(lacking)d of %(total)d lack it): it renders empty. Check the "
            "spelling, or give a fallback: {{ %(variable)s | default('...') }}."
        )
    else:
        message = ngettext(
            "{{ %(variable)s }} is neither a contact field nor an attribute of any sampled "
            "contact (%(lacking)d of %(total)d lack it): it renders empty. Check the "
            "spelling, or give a fallback: {{ %(variable)s | default('...') }}.",
            "{{ %(variable)s }} is neither a contact field nor an attribute of any sampled "
            "contacts (%(lacking)d of %(total)d lack it): it renders empty. Check the "
            "spelling, or give a fallback: {{ %(variable)s | default('...') }}.",
            values["total"],
        )
    return message % values


def _check_html_size(run: _Run) -> None:
    """Gmail clips a large HTML, and with it, often, the unsubscribe link."""
    if run.max_html > GMAIL_CLIP_BYTES:
        run.add(
            Level.WARNING,
            "html_clipped",
            _(
                "The HTML is up to %(size)s KB: Gmail clips messages over 102 KB and hides the "
                "rest (often the unsubscribe link) behind 'View entire message'. Shorten it or "
                "move images and styles out."
            )
            % {"size": f"{run.max_html / 1024:.0f}"},
        )


def _note_sampled(run: _Run) -> None:
    """What was rendered, so that a clean report says how much it looked at."""
    count = len(run.samples)
    if not count:
        return
    values = {"count": count, "total": run.recipients, "size": f"{run.max_html / 1024:.1f}"}
    if run.at_send:
        message = ngettext(
            "Rendered %(count)d recipient from a random point of the audience; largest HTML "
            "%(size)s KB.",
            "Rendered %(count)d recipients from a random point of the audience; largest HTML "
            "%(size)s KB.",
            count,
        )
    else:
        message = ngettext(
            "Rendered %(count)d random recipient of %(total)d; largest HTML %(size)s KB.",
            "Rendered %(count)d random recipients of %(total)d; largest HTML %(size)s KB.",
            count,
        )
    run.add(Level.INFO, "sampled", message % values)


# The pre-flight, in the order its findings are reported. Each check reads the run and adds
# its findings; a check that leaves the run stopped ends it (PreflightReport then holds the
# findings so far).
PREFLIGHT_CHECKS: tuple[tuple[str, PreflightCheck], ...] = (
    ("attachments", _check_attachments),
    ("from", _check_from),
    ("reply_to", _check_reply_to),
    ("segments", _check_segments),
    ("recipients", _check_recipients),
    ("dkim", _check_dkim),
    ("subject", _check_subject),
    ("content", _check_content),
    ("templates", _check_templates),
    ("unsubscribe_link", _check_unsubscribe_link),
    ("headers", _check_headers),
    ("sample", _check_sample),
    ("variables", _check_variables),
    ("html_size", _check_html_size),
    ("sampled", _note_sampled),
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
    subject, html, text = campaign.content()
    run = _Run(campaign, sample_size, at_send, subject, html, text)
    for _name, check in PREFLIGHT_CHECKS:
        check(run)
        if run.stopped:
            return PreflightReport(tuple(run.findings), recipients=run.recipients)
    return PreflightReport(
        tuple(run.findings),
        recipients=run.recipients,
        sampled=len(run.samples),
        max_html_bytes=run.max_html,
        variables=tuple(sorted(run.variables)),
    )


@dataclass
class _SampleProblems:
    """What rendering the sample found, reported once it is done."""

    failures: Counter[str] = field(default_factory=Counter)
    first_failure: dict[str, int] = field(default_factory=dict)
    bad_links: Counter[tuple[str, str]] = field(default_factory=Counter)
    unrendered: int = 0

    def fail(self, problem: str, contact_id: int) -> None:
        self.failures[problem] += 1
        self.first_failure.setdefault(problem, contact_id)


def _render_sample(run: _Run, compiled: CompiledTemplates) -> int:
    """Render (and compose) every sampled contact; returns the largest HTML in bytes."""
    max_html = 0
    problems = _SampleProblems()
    for contact in run.samples:
        context = preview_context(
            run.campaign.name,
            contact,
            unsubscribe_url="https://preflight.invalid/u/token/",
            webview_url="https://preflight.invalid/v/token/",
        )
        try:
            content = render_content(compiled, context)
        except TemplateError as exc:
            problems.fail(str(exc), contact.contact_id)
            continue
        max_html = max(max_html, len(content.html.encode("utf-8")))
        if "{{" in content.html or "{%" in content.html:
            problems.unrendered += 1
        parser = _Links()
        parser.feed(content.html)
        for href in dict.fromkeys(parser.hrefs):
            problem = link_problem(href)
            if problem:
                problems.bad_links[(href, problem)] += 1
        if run.composer is not None:
            try:
                run.composer.compose(
                    to_email=contact.email,
                    to_name=contact.name,
                    content=content,
                    message_id="<preflight@preflight.invalid>",
                )
            except InvalidAddressError:
                pass  # one bad address fails that delivery only; the import should have caught it
            except DeliveryError as exc:
                problems.fail(_("composing: %(error)s") % {"error": exc}, contact.contact_id)
    _report_sample(run, problems)
    return max_html


def _report_sample(run: _Run, problems: _SampleProblems) -> None:
    total = len(run.samples)
    for problem, count in problems.failures.items():
        run.add(
            Level.ERROR,
            "render_error",
            _(
                "Rendering fails for %(count)d of %(total)d sampled contacts (first: contact "
                "#%(contact)d): %(problem)s"
            )
            % {
                "count": count,
                "total": total,
                "contact": problems.first_failure[problem],
                "problem": problem,
            },
        )
    for (href, problem), count in list(problems.bad_links.items())[:_MAX_EXAMPLES]:
        shown = href if len(href) <= 120 else href[:117] + "..."
        run.add(
            Level.WARNING,
            "malformed_link",
            _("The link %(link)s %(problem)s (in %(count)d of %(total)d sampled messages).")
            % {"link": repr(shown), "problem": problem, "count": count, "total": total},
        )
    more = len(problems.bad_links) - _MAX_EXAMPLES
    if more > 0:
        run.add(
            Level.WARNING,
            "malformed_link",
            ngettext(
                "... and %(count)d more malformed link.",
                "... and %(count)d more malformed links.",
                more,
            )
            % {"count": more},
        )
    if problems.unrendered:
        run.add(
            Level.WARNING,
            "unrendered_tag",
            _(
                "'{{' or '{%%' is left in the rendered HTML of %(count)d of %(total)d sampled "
                "messages: a tag is escaped, in a {%% raw %%} block or comes from a contact "
                "value."
            )
            % {"count": problems.unrendered, "total": total},
        )
