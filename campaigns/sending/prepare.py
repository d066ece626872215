"""Preparation of a campaign, once per worker process: templates, links, MIME skeleton, signer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings

from campaigns.models import Campaign
from campaigns.sending.claims import ClaimedDelivery
from campaigns.tracking import campaign_links_register
from delivery import selectors as delivery_selectors
from delivery import tokens, tracking
from delivery.selectors import Route
from mailkit.compose import (
    Attachment,
    Composer,
    MessageSpec,
    make_message_id,
    validate_address,
)
from mailkit.dkim import DkimSigner
from mailkit.render import (
    CompiledTemplates,
    TemplateSource,
    compile_templates,
    contact_context,
    render_content,
)
from mailkit.smtp import Envelope


@dataclass(frozen=True)
class PreparedCampaign:
    """Everything done once per campaign so the per-recipient path only personalizes."""

    campaign_id: int
    campaign_name: str
    compiled: CompiledTemplates
    composer: Composer
    signer: DkimSigner | None
    message_id_domain: str
    attachments: tuple[Attachment, ...] = ()
    routes: tuple[Route, ...] = ()  # SMTP servers, rate limits; one chosen per batch task

    def recipient_context(self, row: ClaimedDelivery, *, pixel: bool = True) -> dict:
        """What the templates see for one recipient: their attributes and their own links.

        Tracking URLs are the per-recipient half of the links rewritten once per campaign
        (delivery.tracking.instrument_html); computing them is a few HMACs, no database.
        """
        public = settings.EDM_PUBLIC_URL
        return contact_context(
            email=row.email,
            name=row.name,
            attributes=row.attributes or {},
            extra={
                "unsubscribe_url": tokens.unsubscribe_url(row.id),
                "campaign_name": self.campaign_name,
                "webview_url": f"{public}/v/{tracking.recipient_token('webview', row.id)}/",
                tracking.OPEN_PIXEL_VAR: (
                    f"{public}/o/{tracking.recipient_token('open', row.id)}.gif" if pixel else ""
                ),
                tracking.CLICK_BASE_VAR: (
                    f"{public}/c/{tracking.click_token(row.id, self.campaign_id)}/"
                ),
            },
        )

    def envelope(self, row: ClaimedDelivery) -> Envelope:
        """Render, compose and sign one recipient's message: no database access."""
        context = self.recipient_context(row)
        unsubscribe = context["unsubscribe_url"]
        content = render_content(self.compiled, context)
        message_id = make_message_id(
            domain=self.message_id_domain, delivery_id=row.id, secret=tokens.message_id_secret()
        )
        reference = tokens.delivery_reference(row.id)
        data = self.composer.compose(
            to_email=row.email,
            to_name=row.name,
            content=content,
            message_id=message_id,
            unsubscribe_url=unsubscribe,
            unsubscribe_mailto=tokens.unsubscribe_mailto(delivery_id=row.id),
            delivery_reference=reference,
            attachments=self.attachments,
        )
        if self.signer is not None:
            data = self.signer.sign(data)
        sender = tokens.delivery_return_path(row.id)
        # RFC 6531: only a non-ASCII local part needs SMTPUTF8; an internationalized domain
        # travels as its A-label (xn--...), which any server accepts.
        recipient = validate_address(row.email)
        return Envelope(
            sender=sender,
            recipients=(recipient,),
            data=data,
            tag=(row.id, message_id),
            smtputf8=not recipient.isascii(),
            dsn_envid=reference,
            dsn_notify="FAILURE,DELAY",
            dsn_ret="HDRS",
        )


# Prepared campaigns per worker process, keyed by id and last change.
_PREPARED: dict[int, tuple[datetime, PreparedCampaign]] = {}


def campaign_list_id(campaign: Campaign, from_domain: str) -> str:
    """The List-Id header (RFC 2919): the id is ASCII; the campaign's name is kept as the
    phrase only when it needs no quoting or encoding."""
    if not campaign.lists.exists():
        return ""
    name = campaign.name
    plain = name.isascii() and not set('<>"\\()[]:;@,') & set(name)
    return f"{name if plain else ''} <campaign-{campaign.pk}.{from_domain}>".strip()


def campaign_attachments(campaign: Campaign) -> tuple[Attachment, ...]:
    """The campaign's files, read once per campaign (the composer encodes each once too)."""
    import mimetypes
    from pathlib import PurePath

    files = []
    for item in campaign.attachments.all():
        name = item.filename or PurePath(item.file.name).name
        content_type = (
            item.content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        )
        with item.file.open("rb") as handle:
            files.append(Attachment(name, content_type, handle.read(), item.content_id))
    return tuple(files)


def campaign_prepare(campaign: Campaign) -> PreparedCampaign:
    cached = _PREPARED.get(campaign.pk)
    if cached and cached[0] == campaign.updated_at:
        return cached[1]
    subject, html, text = campaign.content()
    # Links are registered and rewritten once per campaign; only registered links redirect.
    link_ids = campaign_links_register(campaign_id=campaign.pk, html=html)
    html = tracking.instrument_html(
        html,
        link_tokens={url: tracking.link_token(campaign.pk, pk) for url, pk in link_ids.items()},
        pixel=campaign.track_opens,
    )
    compiled = compile_templates(TemplateSource(subject=subject, html=html, text=text))
    from_domain = campaign.from_email.rpartition("@")[2].lower()
    list_id = campaign_list_id(campaign, from_domain)
    attachments = campaign_attachments(campaign)
    composer = Composer(
        MessageSpec(
            from_email=campaign.from_email,
            from_name=campaign.from_name,
            reply_to=campaign.reply_to,
            list_id=list_id,
            campaign_id=campaign.pk,
        )
    )
    routes = delivery_selectors.routes_for(list(campaign.smtp_servers.all()))
    prepared = PreparedCampaign(
        campaign_id=campaign.pk,
        campaign_name=campaign.name,
        compiled=compiled,
        composer=composer,
        signer=delivery_selectors.dkim_signer_for(from_domain),
        message_id_domain=from_domain,
        routes=tuple(routes),
        attachments=attachments,
    )
    _PREPARED[campaign.pk] = (campaign.updated_at, prepared)
    return prepared
