"""Message templates and campaigns."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from django.utils.translation import gettext_lazy as _

from mailkit.attachments import attachment_content_id, attachment_content_type
from mailkit.errors import InvalidHeaderError


class Template(models.Model):
    """A reusable message: subject, HTML and text, written in Jinja2."""

    name = models.CharField(max_length=200, unique=True)
    subject = models.CharField(max_length=998)
    html = models.TextField(
        help_text="Jinja2 HTML. Variables: {{ name }}, {{ email }}, attributes."
    )
    text = models.TextField(blank=True, help_text="Plain-text part; generated from HTML if empty.")
    # A block design (campaigns.content.schema); when set, html and text are rendered from it.
    design = models.JSONField(null=True, blank=True, editable=False)
    design_version = models.PositiveSmallIntegerField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class CampaignStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    SCHEDULED = "scheduled", "Scheduled"
    SENDING = "sending", "Sending"
    PAUSED = "paused", "Paused"
    SENT = "sent", "Sent"
    CANCELLED = "cancelled", "Cancelled"
    FAILED = "failed", "Failed"


class Campaign(models.Model):
    name = models.CharField(max_length=200)
    template = models.ForeignKey(
        Template,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        help_text="Used for any of subject, HTML and text left empty below.",
    )
    subject = models.CharField(max_length=998, blank=True)
    html = models.TextField(blank=True)
    text = models.TextField(blank=True)
    from_email = models.CharField(max_length=320)
    from_name = models.CharField(max_length=200, blank=True)
    reply_to = models.CharField(max_length=320, blank=True)
    lists = models.ManyToManyField("contacts.ContactList", related_name="campaigns", blank=True)
    segments = models.ManyToManyField(
        "contacts.Segment",
        related_name="campaigns",
        blank=True,
        help_text="Also send to the contacts of these segments (each address once).",
    )
    smtp_servers = models.ManyToManyField(
        "delivery.SmtpServer",
        blank=True,
        related_name="campaigns",
        help_text="Empty: the enabled servers marked default (or EDM_SMTP_URL when none is). "
        "Traffic is split by the servers' weights; a failing server is rested.",
    )
    track_opens = models.BooleanField(
        _("track opens"),
        default=True,
        help_text=_(
            "Adds an invisible image to each message to count opens. Off: no image, and the "
            "report counts no opens (clicks are still counted)."
        ),
    )
    status = models.CharField(
        max_length=10, choices=CampaignStatus.choices, default=CampaignStatus.DRAFT
    )
    status_reason = models.TextField(blank=True)
    scheduled_at = models.DateTimeField(null=True, blank=True)
    total_recipients = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    # Set once the deliveries are materialized; a campaign is never finished before that.
    dispatched_at = models.DateTimeField(null=True, blank=True)
    # Set once the first messages' failure rate was judged (EDM_PAUSE_SAMPLE): a campaign is
    # auto-paused at most once, and a resume by a person is final.
    error_rate_judged = models.BooleanField(default=False, editable=False)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name

    def content(self) -> tuple[str, str, str]:
        """The effective subject, HTML and text: own fields first, then the template's."""
        template = self.template
        return (
            self.subject or (template.subject if template else ""),
            self.html or (template.html if template else ""),
            self.text or (template.text if template else ""),
        )


class CampaignAttachment(models.Model):
    """A file sent with every message of a campaign; with a Content-ID, an inline image that
    the HTML shows with ``<img src="cid:...">``."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="attachments")
    file = models.FileField(upload_to="attachments/%Y/%m/")
    filename = models.CharField(max_length=255, blank=True, help_text="Empty: the file's name.")
    content_type = models.CharField(max_length=100, blank=True, help_text="Empty: guessed.")
    content_id = models.CharField(
        max_length=100, blank=True, help_text='For an inline image: use it as src="cid:<this>".'
    )

    def __str__(self) -> str:
        return self.filename or self.file.name

    def clean(self) -> None:
        # Refused here, in the form, rather than at send time, when the campaign would fail.
        errors = {}
        for field, check in (
            ("content_type", attachment_content_type),
            ("content_id", attachment_content_id),
        ):
            value = getattr(self, field)
            if value:
                try:
                    check(value)
                except InvalidHeaderError as exc:
                    errors[field] = str(exc)
        if errors:
            raise ValidationError(errors)


from campaigns.tracking_models import *  # noqa: E402,F401,F403
