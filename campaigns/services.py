"""Writes of the campaigns app: the campaign's lifecycle (create, validate, send, test sends,
pause, resume, cancel, schedule, unsubscribe); the send engine is campaigns/sending/."""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.utils import timezone

from campaigns.errors import CampaignStateError, CampaignValidationError
from campaigns.models import Campaign, CampaignStatus
from campaigns.sending import claims
from campaigns.sending.prepare import campaign_prepare
from contacts.models import ContactList
from contacts.suppression import contacts_unsubscribed
from delivery import services as delivery_services
from mailkit.errors import DeliveryError, TemplateError
from mailkit.render import TemplateSource, compile_templates
from mailkit.smtp import SendResult, SendStatus

SENDABLE_FROM = (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED, CampaignStatus.FAILED)


def campaign_validate(campaign: Campaign, *, sample_size: int = 50) -> list[str]:
    """Problems that stop a send (the pre-flight's errors): found before the first message."""
    from campaigns.preflight import campaign_preflight

    report = campaign_preflight(campaign, sample_size=sample_size, at_send=True)
    problems = [finding.message for finding in report.errors]
    if problems:
        return problems
    try:
        campaign_prepare(campaign)
    except (TemplateError, DeliveryError) as exc:
        return [f"The campaign cannot be prepared: {exc}"]
    return []


def campaign_create(
    *,
    name: str,
    list_names: list[str],
    subject: str,
    html: str,
    text: str = "",
    from_email: str,
    from_name: str = "",
    reply_to: str = "",
) -> Campaign:
    lists = []
    for list_name in list_names:
        contact_list = ContactList.objects.filter(name=list_name).first()
        if contact_list is None:
            raise CampaignValidationError([f"No contact list named {list_name!r}."])
        lists.append(contact_list)
    with transaction.atomic():
        campaign = Campaign.objects.create(
            name=name,
            subject=subject,
            html=html,
            text=text,
            from_email=from_email,
            from_name=from_name,
            reply_to=reply_to,
        )
        campaign.lists.set(lists)
    try:
        compile_templates(TemplateSource(subject=subject, html=html, text=text))
    except TemplateError as exc:
        campaign.delete()
        raise CampaignValidationError([f"Template error: {exc}"]) from exc
    return campaign


def campaign_send(*, campaign_id: int) -> Campaign:
    """Start sending now: lock, validate, mark sending, dispatch after commit."""
    from campaigns.tasks import campaign_dispatch

    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign_id)
        if campaign.status not in SENDABLE_FROM:
            raise CampaignStateError(
                f"Campaign {campaign_id} is {campaign.status}; only a draft, scheduled or "
                "failed campaign can be sent."
            )
        problems = campaign_validate(campaign)
        if problems:
            raise CampaignValidationError(problems)
        campaign.status = CampaignStatus.SENDING
        campaign.status_reason = ""
        campaign.started_at = campaign.started_at or timezone.now()
        campaign.dispatched_at = None
        campaign.save(
            update_fields=["status", "status_reason", "started_at", "dispatched_at", "updated_at"]
        )
        campaign_dispatch.delay_on_commit(campaign.pk)
    return campaign


def campaign_send_test(
    *, campaign_id: int, emails: list[str], contact_id: int | None = None
) -> list[SendResult]:
    """Send the campaign as it stands to a few addresses, now, outside any statistics.

    Rendered for one contact (contact_id, else a random recipient); the subject starts with
    "[Test] ". One result per address, in order; an invalid address gets a result, not an error.
    """
    from campaigns.preview import campaign_preview, find_contact
    from mailkit.errors import InvalidAddressError

    campaign = Campaign.objects.get(pk=campaign_id)
    contact = find_contact(str(contact_id)) if contact_id else None
    results: dict[str, SendResult] = {}
    for email in emails:
        try:
            preview = campaign_preview(
                campaign, contact=contact, to_email=email, subject_prefix="[Test] "
            )
        except InvalidAddressError as exc:
            results[email] = SendResult(email, SendStatus.PERMANENT, None, "", str(exc), "compose")
            continue
        contact = preview.contact  # the same sample contact for every address
        # The preview is signed already; tests go from the campaign's own address.
        results[email] = delivery_services.message_send_now(
            data=preview.raw,
            from_email=campaign.from_email,
            to_email=email,
            tag=email,
            sender=campaign.from_email,
            sign=False,
        )
    return [results[email] for email in emails if email in results]


def delivery_unsubscribe(
    *, delivery_id: int, source: str, ip: str = "", user_agent: str = ""
) -> bool:
    """Unsubscribe a recipient from the lists its campaign was sent to; idempotent.

    A recipient of a campaign that targets segments opts out of all campaign mail (the
    contact becomes unsubscribed): an unsubscribe link must always work. A transactional
    message's recipient (a delivery without a campaign: the API's marketing messages) opts
    out of all marketing mail to the address. Each subscription changed gets a consent
    record. Returns True when something changed.
    """
    from campaigns.tracking import tracking_record_unsubscribe
    from contacts.models import Subscription
    from contacts.signup import subscriptions_unsubscribe
    from contacts.suppression import address_unsubscribe_everywhere
    from delivery.models import Delivery, DeliveryEvent, EventKind

    delivery = Delivery.objects.select_related("campaign").filter(pk=delivery_id).first()
    if delivery is None:
        return False
    now = timezone.now()
    if delivery.campaign is None:
        with transaction.atomic():
            _, changed = address_unsubscribe_everywhere(
                email=delivery.email,
                source=f"message {delivery.pk}: {source}"[:100],
                ip=ip,
                user_agent=user_agent,
            )
            if changed:
                DeliveryEvent.objects.create(
                    delivery=delivery, kind=EventKind.UNSUBSCRIBE, created_at=now, detail=source
                )
        return changed
    with transaction.atomic():
        changed = subscriptions_unsubscribe(
            Subscription.objects.filter(
                contact_id=delivery.contact_id,
                contact_list__in=delivery.campaign.lists.all(),
            ),
            source=f"campaign {delivery.campaign_id}: {source}",
            ip=ip,
            user_agent=user_agent,
        )
        member = Subscription.objects.filter(
            contact_id=delivery.contact_id, contact_list__in=delivery.campaign.lists.all()
        ).exists()
        if not member or delivery.campaign.segments.exists():
            # Reached through a segment: the person cannot leave a segment, so the opt-out
            # covers all campaign mail.
            changed += contacts_unsubscribed(contact_ids=[delivery.contact_id], now=now)
        if changed:
            DeliveryEvent.objects.create(
                delivery=delivery, kind=EventKind.UNSUBSCRIBE, created_at=now, detail=source
            )
            tracking_record_unsubscribe(
                delivery_id=delivery.pk, campaign_id=delivery.campaign_id, at=now
            )
    return bool(changed)


def _transition(
    campaign_id: int, *, allowed: tuple[str, ...], to: str, action: str, **fields
) -> Campaign:
    """Compare-and-set a campaign's status; a refused transition says why."""
    now = timezone.now()
    changed = Campaign.objects.filter(pk=campaign_id, status__in=allowed).update(
        status=to, updated_at=now, **fields
    )
    campaign = Campaign.objects.get(pk=campaign_id)
    if not changed:
        raise CampaignStateError(
            f"Campaign {campaign_id} is {campaign.status}: it cannot be {action}d "
            f"(only when {' or '.join(allowed)})."
        )
    return campaign


def campaign_pause(*, campaign_id: int, reason: str = "Paused by a user.") -> Campaign:
    """Stop claiming new recipients; messages already on the wire finish and are recorded."""
    return _transition(
        campaign_id,
        allowed=(CampaignStatus.SENDING,),
        to=CampaignStatus.PAUSED,
        action="pause",
        status_reason=reason,
    )


def campaign_resume(*, campaign_id: int) -> Campaign:
    """Continue a paused campaign from what was actually sent: only open deliveries remain."""
    with transaction.atomic():
        campaign = _transition(
            campaign_id,
            allowed=(CampaignStatus.PAUSED,),
            to=CampaignStatus.SENDING,
            action="resume",
            status_reason="",
        )
        from campaigns.tasks import campaign_resume as resume_task

        resume_task.delay_on_commit(campaign_id)
    return campaign


def campaign_cancel(*, campaign_id: int) -> Campaign:
    """Cancel for good: recipients not yet sent are marked cancelled."""
    with transaction.atomic():
        campaign = _transition(
            campaign_id,
            allowed=(
                CampaignStatus.DRAFT,
                CampaignStatus.SCHEDULED,
                CampaignStatus.SENDING,
                CampaignStatus.PAUSED,
            ),
            to=CampaignStatus.CANCELLED,
            action="cancel",
            finished_at=timezone.now(),
        )
        claims.deliveries_cancel(campaign_id=campaign_id)
    return campaign


def campaign_schedule(*, campaign_id: int, at: datetime) -> Campaign:
    """Schedule a draft for a moment in the future; it is validated now and again at `at`."""
    if at <= timezone.now():
        raise CampaignValidationError(["The scheduled time is in the past."])
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign_id)
        if campaign.status not in (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED):
            raise CampaignStateError(
                f"Campaign {campaign_id} is {campaign.status}: only a draft can be scheduled."
            )
        problems = campaign_validate(campaign)
        if problems:
            raise CampaignValidationError(problems)
        campaign.status = CampaignStatus.SCHEDULED
        campaign.scheduled_at = at
        campaign.status_reason = ""
        campaign.save(update_fields=["status", "scheduled_at", "status_reason", "updated_at"])
    return campaign


def campaign_unschedule(*, campaign_id: int) -> Campaign:
    return _transition(
        campaign_id,
        allowed=(CampaignStatus.SCHEDULED,),
        to=CampaignStatus.DRAFT,
        action="unschedule",
    )
