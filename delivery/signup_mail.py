"""The double opt-in confirmation message of a sign-up form, sent like any other message.

Not Django's email backend: the same composer, DKIM signer and SMTP pool as campaigns. Lives
in delivery (which may read contacts), so contacts never imports the sending machinery.
"""

from __future__ import annotations

import logging

from django.conf import settings

from contacts.models import Subscription, SubscriptionStatus
from contacts.signup import confirm_token, confirm_url
from contacts.signup_limits import signup_mail_quota_release
from contacts.signup_models import SignupForm
from delivery.services import message_send_now
from mailkit.compose import Composer, MessageSpec, make_message_id
from mailkit.errors import DeliveryError, TemplateError
from mailkit.render import TemplateSource, compile_templates, contact_context, render_content
from mailkit.smtp import SendStatus

logger = logging.getLogger(__name__)


def signup_confirmation_send(*, subscription_id: int, form_id: int):
    """Compose and send the confirmation message through the default SMTP route.

    Returns the SendResult (None when there is nothing to send). Not Django's email backend:
    the same composer, DKIM signer and SMTP pool as campaigns.
    """
    subscription = (
        Subscription.objects.select_related("contact", "contact_list")
        .filter(pk=subscription_id)
        .first()
    )
    if subscription is None:
        return None
    contact = subscription.contact
    form = SignupForm.objects.filter(pk=form_id).first()
    if form is None or subscription.status != SubscriptionStatus.UNCONFIRMED:
        # Confirmed or ended meanwhile: no message, so the quota taken for it is given back.
        signup_mail_quota_release(address=contact.email)
        return None
    from_email = form.from_email or settings.EDM_DEFAULT_FROM_EMAIL
    try:
        composer = Composer(MessageSpec(from_email=from_email, from_name=form.from_name))
        compiled = compile_templates(
            TemplateSource(subject=form.confirmation_subject, html=form.confirmation_body)
        )
        context = contact_context(
            email=contact.email,
            name=contact.name,
            attributes={},
            extra={
                "confirm_url": confirm_url(
                    confirm_token(subscription_id=subscription.pk, form_id=form.pk)
                ),
                "list_name": subscription.contact_list.name,
            },
        )
        content = render_content(compiled, context)
        raw = composer.compose(
            to_email=contact.email,
            to_name=contact.name,
            content=content,
            message_id=make_message_id(domain=composer.domain),
        )
    except (TemplateError, DeliveryError) as exc:
        logger.error("sign-up form %s: confirmation message cannot be composed: %s", form.pk, exc)
        signup_mail_quota_release(address=contact.email)
        return None
    result = message_send_now(
        data=raw, from_email=from_email, to_email=contact.email, tag=subscription.pk
    )
    if result.status != SendStatus.SENT:
        # Not handed over: the person may ask again at once instead of after the quota's day.
        signup_mail_quota_release(address=contact.email)
        logger.warning(
            "sign-up confirmation for subscription %s not sent: %s %s",
            subscription.pk,
            result.code,
            result.text,
        )
    return result
