"""Preview: one recipient's message exactly as the workers would build it (admin, test sends)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from email.parser import BytesHeaderParser
from email.policy import default as default_policy

from django.conf import settings

from campaigns.models import Campaign, Template
from campaigns.preflight import SampleContact, preview_context, sample_contacts
from contacts.models import Contact, ContactStatus
from contacts.selectors import contacts_by_keys
from delivery import tokens, tracking
from mailkit.compose import Composer, MessageSpec, make_message_id
from mailkit.dkim import DkimSigner
from mailkit.render import CompiledTemplates, TemplateSource, compile_templates, render_content

__all__ = [
    "PLACEHOLDER_CONTACT",
    "MessagePreview",
    "campaign_preview",
    "find_contact",
    "message_preview",
    "random_contact",
    "template_preview",
]


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
    webview = f"{settings.EDM_PUBLIC_URL}/v/{tracking.recipient_token('webview', 0)}/"
    context = preview_context(
        campaign_name, contact, unsubscribe_url=unsubscribe, webview_url=webview
    )
    content = render_content(compiled, context)
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
