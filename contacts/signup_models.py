"""Public sign-up forms and consent records (services in contacts.signup)."""

from __future__ import annotations

import secrets

from django.db import models
from django.utils.translation import gettext_lazy as _

__all__ = ["ConsentAction", "ConsentRecord", "SignupForm", "SignupMailQuota"]

DEFAULT_CONFIRMATION_SUBJECT = "Please confirm your subscription to {{ list_name }}"
DEFAULT_CONFIRMATION_BODY = (
    "<p>Hello{% if name %} {{ name }}{% endif %},</p>\n"
    "<p>Please confirm that you want to receive {{ list_name }}:</p>\n"
    '<p><a href="{{ confirm_url }}">Yes, subscribe me</a></p>\n'
    "<p>If you did not ask for this, ignore this message: you will not be subscribed.</p>"
)


def new_public_token() -> str:
    return secrets.token_urlsafe(12)


class SignupForm(models.Model):
    """A hosted (and embeddable) subscribe form for one list."""

    contact_list = models.ForeignKey(
        "contacts.ContactList",
        on_delete=models.CASCADE,
        related_name="signup_forms",
        verbose_name=_("list"),
    )
    public_token = models.CharField(
        max_length=40,
        unique=True,
        default=new_public_token,
        help_text=_(
            "The form's address is /subscribe/ followed by this token. Change it to retire old embeds."
        ),
        verbose_name=_("public token"),
    )
    title = models.CharField(max_length=200, verbose_name=_("title"))
    intro = models.TextField(
        blank=True, help_text=_("Shown above the fields."), verbose_name=_("introduction")
    )
    consent_text = models.TextField(
        blank=True,
        help_text=_(
            'Shown above the button and kept with every consent record, e.g. "You can unsubscribe at any time from any of our emails."'
        ),
        verbose_name=_("consent text"),
    )
    ask_name = models.BooleanField(default=True, verbose_name=_("ask for the name"))
    attribute_fields = models.JSONField(
        default=list,
        blank=True,
        help_text=_(
            'Extra text fields stored as contact attributes: [{"key": "city", "label": "City", "required": false}].'
        ),
        verbose_name=_("attribute fields"),
    )
    double_opt_in = models.BooleanField(
        default=True,
        help_text=_("Send a confirmation link; the subscription stays unconfirmed until clicked."),
        verbose_name=_("double opt-in"),
    )
    from_email = models.CharField(
        max_length=320,
        blank=True,
        help_text=_("Confirmation sender; EDM_DEFAULT_FROM_EMAIL if empty."),
        verbose_name=_("sender address"),
    )
    from_name = models.CharField(max_length=200, blank=True, verbose_name=_("sender name"))
    confirmation_subject = models.CharField(
        max_length=998, default=DEFAULT_CONFIRMATION_SUBJECT, verbose_name=_("confirmation subject")
    )
    confirmation_body = models.TextField(
        default=DEFAULT_CONFIRMATION_BODY,
        help_text=_("Jinja2 HTML. Variables: confirm_url (required), name, email, list_name."),
        verbose_name=_("confirmation body"),
    )
    success_url = models.URLField(
        blank=True,
        help_text=_("Where to send people after they submit; our own page if empty."),
        verbose_name=_("page after signing up"),
    )
    enabled = models.BooleanField(default=True, verbose_name=_("enabled"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated"))

    class Meta:
        verbose_name = _("sign-up form")
        verbose_name_plural = _("sign-up forms")
        ordering = ["title"]

    def __str__(self) -> str:
        return self.title

    def shown_text(self) -> str:
        """What the person saw, as kept in the consent record."""
        labels = ["Email"] + (["Name"] if self.ask_name else [])
        labels += [str(f.get("label") or f.get("key")) for f in self.attribute_fields or []]
        parts = [self.title, self.intro, "Fields: " + ", ".join(labels), self.consent_text]
        return "\n".join(p for p in parts if p)


class ConsentAction(models.TextChoices):
    SUBSCRIBED = "subscribed", _("Subscribed")
    CONFIRMED = "confirmed", _("Confirmed")
    UNSUBSCRIBED = "unsubscribed", _("Unsubscribed")


class ConsentRecord(models.Model):
    """Append-only evidence of consent for one subscription."""

    subscription = models.ForeignKey(
        "contacts.Subscription",
        on_delete=models.CASCADE,
        related_name="consent_records",
        verbose_name=_("subscription"),
    )
    # Denormalized from the subscription so the contact page can show the history inline.
    contact = models.ForeignKey(
        "contacts.Contact",
        on_delete=models.CASCADE,
        related_name="consent_records",
        verbose_name=_("contact"),
    )
    action = models.CharField(
        max_length=20, choices=ConsentAction.choices, verbose_name=_("action")
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True, verbose_name=_("time"))
    ip = models.GenericIPAddressField(null=True, blank=True, verbose_name=_("IP address"))
    user_agent = models.CharField(max_length=500, blank=True, verbose_name=_("user agent"))
    source = models.CharField(
        max_length=100,
        help_text=_('"form:" and the number of the form, "import", "api", ...'),
        verbose_name=_("source"),
    )
    form = models.ForeignKey(
        SignupForm,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="consents",
        verbose_name=_("sign-up form"),
    )
    form_text = models.TextField(
        blank=True, help_text=_("The form text shown at the time."), verbose_name=_("form text")
    )

    class Meta:
        verbose_name = _("consent record")
        verbose_name_plural = _("consent records")
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_action_display()} {self.subscription_id} ({self.source})"


class SignupMailQuota(models.Model):
    """How many confirmation messages went out in a window that started at ``window_start``:
    one row per mailbox, and one per window length for all forms together.

    In the database, not Redis, so that the limit holds across web processes, survives a Redis
    restart and is taken under a row lock (two concurrent sign-ups send one message).
    """

    # "mailbox:<sha256 of the mailbox>" (no address stored twice), "all:hour", "all:day".
    key = models.CharField(max_length=80, unique=True, verbose_name=_("key"))
    window_start = models.DateTimeField(verbose_name=_("window start"))
    count = models.PositiveIntegerField(default=0, verbose_name=_("count"))

    class Meta:
        verbose_name = _("sign-up mail quota")
        verbose_name_plural = _("sign-up mail quotas")

    def __str__(self) -> str:
        return f"{self.key}: {self.count} since {self.window_start:%Y-%m-%d %H:%M}"
