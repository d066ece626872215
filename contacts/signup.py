"""Public sign-up: submit a form, double opt-in by a signed link, consent records.

The person filling the form always gets the same answer whatever the address's state
(new, already subscribed, suppressed, bounced), so the form leaks nothing about who is on a
list. Suppressed, bounced and complained addresses are never subscribed.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any

from celery import current_app
from django.conf import settings
from django.core import signing
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.html import escape
from django.utils.translation import gettext as _

from contacts.models import (
    ConsentAction,
    ConsentRecord,
    Contact,
    ContactStatus,
    SignupForm,
    Subscription,
    SubscriptionStatus,
)
from contacts.normalize import InvalidEmail, normalize_email
from contacts.selectors import contacts_by_keys, suppression_check
from contacts.signup_limits import signup_mail_quota_take
from mailkit.text import clean_text, has_refused

logger = logging.getLogger(__name__)

CONFIRM_SALT = "skylark.signup-confirm"
CONFIRM_MAX_AGE_SECONDS = 7 * 24 * 3600
HONEYPOT_FIELD = "website"
MAX_ATTRIBUTE_LENGTH = 500


class SignupOutcome(enum.StrEnum):
    """What a submission did (the person sees the same page for all but INVALID)."""

    SUBSCRIBED = "subscribed"  # single opt-in: subscribed now
    CONFIRMATION_SENT = "confirmation_sent"  # double opt-in: waiting for the link
    # Double opt-in, but the mailbox had its confirmation in the last day (or all forms hit
    # their cap): waiting for the link already sent, no new message.
    CONFIRMATION_LIMITED = "confirmation_limited"
    ALREADY_SUBSCRIBED = "already_subscribed"
    IGNORED = "ignored"  # suppressed, bounced or complained: silently not subscribed
    INVALID = "invalid"  # the form is wrong (bad address, missing required field)


class ConfirmOutcome(enum.StrEnum):
    CONFIRMED = "confirmed"
    ALREADY_CONFIRMED = "already_confirmed"
    INVALID = "invalid"  # tampered, expired, or no longer waiting for confirmation


@dataclass(frozen=True)
class SignupResult:
    outcome: SignupOutcome
    errors: dict[str, str]
    subscription_id: int | None = None

    @property
    def accepted(self) -> bool:
        return self.outcome != SignupOutcome.INVALID


# --- tokens --------------------------------------------------------------------------------


def confirm_token(*, subscription_id: int, form_id: int) -> str:
    return signing.dumps([subscription_id, form_id], salt=CONFIRM_SALT)


def read_confirm_token(token: str) -> tuple[int, int] | None:
    """(subscription id, form id) of a valid token younger than 7 days, else None."""
    try:
        subscription_id, form_id = signing.loads(
            token, salt=CONFIRM_SALT, max_age=CONFIRM_MAX_AGE_SECONDS
        )
        return int(subscription_id), int(form_id)
    except (signing.BadSignature, ValueError, TypeError):
        return None


def confirm_url(token: str) -> str:
    return f"{settings.EDM_PUBLIC_URL}/subscribe/confirm/{token}/"


# --- consent -------------------------------------------------------------------------------


def consent_record_add(
    *,
    subscription: Subscription,
    action: str,
    source: str,
    ip: str = "",
    user_agent: str = "",
    form: SignupForm | None = None,
    form_text: str = "",
) -> ConsentRecord:
    """Append one consent record (imports and the API can call this too)."""
    return ConsentRecord.objects.create(
        subscription=subscription,
        contact_id=subscription.contact_id,
        action=action,
        ip=ip or None,
        user_agent=clean_text(user_agent or "")[:500],  # a header from outside
        source=source[:100],
        form=form,
        form_text=form_text,
    )


def subscriptions_unsubscribe(
    subscriptions: QuerySet[Subscription], *, source: str, ip: str = "", user_agent: str = ""
) -> int:
    """End the given subscriptions that are not ended yet, each with a consent record; the
    rows are locked first (run inside a transaction). Returns how many changed."""
    changed = list(
        subscriptions.select_for_update().exclude(status=SubscriptionStatus.UNSUBSCRIBED)
    )
    for subscription in changed:
        subscription.status = SubscriptionStatus.UNSUBSCRIBED
        subscription.save(update_fields=["status", "updated_at"])
        consent_record_add(
            subscription=subscription,
            action=ConsentAction.UNSUBSCRIBED,
            source=source,
            ip=ip,
            user_agent=user_agent,
        )
    return len(changed)


# --- submit and confirm --------------------------------------------------------------------


def _clean_submission(
    form: SignupForm, data: dict[str, Any]
) -> tuple[str, str, dict[str, str], dict[str, str]]:
    errors: dict[str, str] = {}
    # NUL and lone surrogates cannot be stored (PostgreSQL): a form error, not a server error.
    unstorable = _("This field holds characters that are not allowed.")
    stored = [
        "email",
        "name",
        *(str(spec.get("key") or "") for spec in form.attribute_fields or []),
    ]
    for key in stored:
        if has_refused(str(data.get(key) or "")):
            errors[key] = unstorable
    if errors:
        return "", "", {}, errors
    try:
        email = normalize_email(str(data.get("email") or ""))
    except InvalidEmail:
        email = ""
        errors["email"] = "Enter a valid email address."
    name = " ".join(str(data.get("name") or "").split())[:300] if form.ask_name else ""
    attributes: dict[str, str] = {}
    for spec in form.attribute_fields or []:
        key = str(spec.get("key") or "")
        if not key:
            continue
        value = " ".join(str(data.get(key) or "").split())[:MAX_ATTRIBUTE_LENGTH]
        if value:
            attributes[key] = value
        elif spec.get("required"):
            errors[key] = "This field is required."
    return email, name, attributes, errors


def signup_submit(
    *, form: SignupForm, data: dict[str, Any], ip: str = "", user_agent: str = ""
) -> SignupResult:
    """Handle one form submission; sends the confirmation message (double opt-in) after commit.

    New contacts are created with the form's name and attributes; an existing contact keeps
    its data and only gains the subscription. A contact that had unsubscribed from the list
    goes through double opt-in again even when the form is single opt-in.
    """
    email, name, attributes, errors = _clean_submission(form, data)
    if errors:
        return SignupResult(SignupOutcome.INVALID, errors)
    if suppression_check([email]):
        logger.info("sign-up form %s: suppressed address ignored", form.pk)
        return SignupResult(SignupOutcome.IGNORED, {})
    source = f"form:{form.pk}"
    with transaction.atomic():
        contact = contacts_by_keys([email.lower()]).select_for_update().first()
        if contact is None:
            try:
                with transaction.atomic():
                    contact = Contact.objects.create(email=email, name=name, attributes=attributes)
            except IntegrityError:  # created meanwhile by another request
                contact = contacts_by_keys([email.lower()]).select_for_update().get()
        if contact.status in (ContactStatus.BOUNCED, ContactStatus.COMPLAINED):
            return SignupResult(SignupOutcome.IGNORED, {})
        subscription, created = Subscription.objects.select_for_update().get_or_create(
            contact=contact,
            contact_list_id=form.contact_list_id,
            defaults={"status": SubscriptionStatus.UNCONFIRMED, "source": source},
        )
        if not created and subscription.status == SubscriptionStatus.SUBSCRIBED:
            if contact.status == ContactStatus.ACTIVE:
                return SignupResult(SignupOutcome.ALREADY_SUBSCRIBED, {}, subscription.pk)
        came_back = not created and (
            subscription.status == SubscriptionStatus.UNSUBSCRIBED
            or contact.status == ContactStatus.UNSUBSCRIBED
        )
        double_opt_in = form.double_opt_in or came_back
        subscription.status = (
            SubscriptionStatus.UNCONFIRMED if double_opt_in else SubscriptionStatus.SUBSCRIBED
        )
        if created or came_back:
            subscription.source = source
        subscription.save(update_fields=["status", "source", "updated_at"])
        consent_record_add(
            subscription=subscription,
            action=ConsentAction.SUBSCRIBED,
            source=source,
            ip=ip,
            user_agent=user_agent,
            form=form,
            form_text=form.shown_text(),
        )
        if double_opt_in:
            subscription_id = subscription.pk
            # Last in the transaction, so the quota rows stay locked for the shortest time.
            # A refusal looks the same to the visitor: nothing tells that the address is known.
            if not signup_mail_quota_take(address=contact.email):
                logger.info(
                    "sign-up form %s: no confirmation for subscription %s (quota full)",
                    form.pk,
                    subscription_id,
                )
                return SignupResult(SignupOutcome.CONFIRMATION_LIMITED, {}, subscription.pk)
            # Never send inside the transaction: a slow SMTP server would hold the row locks.
            transaction.on_commit(
                lambda: current_app.signature(
                    "delivery.signup_confirmation", args=(subscription_id, form.pk)
                ).delay()
            )
            return SignupResult(SignupOutcome.CONFIRMATION_SENT, {}, subscription.pk)
    return SignupResult(SignupOutcome.SUBSCRIBED, {}, subscription.pk)


def signup_confirm(*, token: str, ip: str = "", user_agent: str = "") -> ConfirmOutcome:
    """Confirm a double opt-in; only a subscription still waiting (unconfirmed) is changed,
    so an old link cannot undo a later unsubscribe."""
    parsed = read_confirm_token(token)
    if parsed is None:
        return ConfirmOutcome.INVALID
    subscription_id, form_id = parsed
    with transaction.atomic():
        subscription = (
            Subscription.objects.select_for_update()
            .select_related("contact")
            .filter(pk=subscription_id)
            .first()
        )
        if subscription is None:
            return ConfirmOutcome.INVALID
        if subscription.status == SubscriptionStatus.SUBSCRIBED:
            return ConfirmOutcome.ALREADY_CONFIRMED
        if subscription.status != SubscriptionStatus.UNCONFIRMED:
            return ConfirmOutcome.INVALID
        contact = subscription.contact
        if contact.status in (ContactStatus.BOUNCED, ContactStatus.COMPLAINED) or (
            suppression_check([contact.email])
        ):
            return ConfirmOutcome.INVALID
        subscription.status = SubscriptionStatus.SUBSCRIBED
        subscription.save(update_fields=["status", "updated_at"])
        if contact.status == ContactStatus.UNSUBSCRIBED:
            # A confirmed sign-up is fresh consent: the contact may receive mail again.
            Contact.objects.filter(pk=contact.pk).update(
                status=ContactStatus.ACTIVE, updated_at=timezone.now()
            )
        form = SignupForm.objects.filter(pk=form_id).first()
        consent_record_add(
            subscription=subscription,
            action=ConsentAction.CONFIRMED,
            source=f"form:{form_id}",
            ip=ip,
            user_agent=user_agent,
            form=form,
        )
    return ConfirmOutcome.CONFIRMED


# --- embed ---------------------------------------------------------------------------------


def signup_form_url(form: SignupForm) -> str:
    return f"{settings.EDM_PUBLIC_URL}/subscribe/{form.public_token}/"


def signup_embed_html(form: SignupForm) -> str:
    """A plain HTML form to paste into any site (no script; posts to the hosted form)."""
    lines = [
        f'<form action="{escape(signup_form_url(form))}" method="post" accept-charset="utf-8">',
        '  <label>Email <input type="email" name="email" required></label>',
    ]
    if form.ask_name:
        lines.append('  <label>Name <input type="text" name="name"></label>')
    for spec in form.attribute_fields or []:
        key = escape(str(spec.get("key") or ""))
        if not key:
            continue
        label = escape(str(spec.get("label") or spec.get("key")))
        required = " required" if spec.get("required") else ""
        lines.append(f'  <label>{label} <input type="text" name="{key}"{required}></label>')
    lines += [
        "  <!-- Leave this hidden field empty: it catches bots. -->",
        f'  <div style="position:absolute;left:-5000px" aria-hidden="true"><input type="text" '
        f'name="{HONEYPOT_FIELD}" tabindex="-1" autocomplete="off" value=""></div>',
    ]
    if form.consent_text:
        lines.append(f"  <p>{escape(form.consent_text)}</p>")
    lines += ['  <button type="submit">Subscribe</button>', "</form>"]
    return "\n".join(lines)
