"""Message templates and campaigns."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from django.utils.translation import gettext_lazy as _

from mailkit.attachments import attachment_content_id, attachment_content_type
from mailkit.errors import InvalidHeaderError


class Template(models.Model):
    """A reusable message: subject, HTML and text, written in Jinja2."""

    name = models.CharField(max_length=200, unique=True, verbose_name=_("name"))
    subject = models.CharField(max_length=998, verbose_name=_("subject"))
    html = models.TextField(
        help_text=_("Jinja2 HTML. Variables: {{ name }}, {{ email }}, attributes."),
        verbose_name=_("HTML"),
    )
    text = models.TextField(
        blank=True,
        help_text=_("Plain-text part; generated from HTML if empty."),
        verbose_name=_("plain text"),
    )
    # A block design (campaigns.content.schema); when set, html and text are rendered from it.
    design = models.JSONField(null=True, blank=True, editable=False, verbose_name=_("design"))
    design_version = models.PositiveSmallIntegerField(
        null=True, blank=True, editable=False, verbose_name=_("design version")
    )
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated"))

    class Meta:
        verbose_name = _("template")
        verbose_name_plural = _("templates")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class CampaignStatus(models.TextChoices):
    DRAFT = "draft", _("Draft")
    SCHEDULED = "scheduled", _("Scheduled")
    SENDING = "sending", _("Sending")
    PAUSED = "paused", _("Paused")
    SENT = "sent", _("Sent")
    CANCELLED = "cancelled", _("Cancelled")
    FAILED = "failed", _("Failed")


class Campaign(models.Model):
    name = models.CharField(max_length=200, verbose_name=_("name"))
    template = models.ForeignKey(
        Template,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        help_text=_("Used for any of subject, HTML and text left empty below."),
        verbose_name=_("template"),
    )
    subject = models.CharField(max_length=998, blank=True, verbose_name=_("subject"))
    html = models.TextField(blank=True, verbose_name=_("HTML"))
    text = models.TextField(blank=True, verbose_name=_("plain text"))
    from_email = models.CharField(max_length=320, verbose_name=_("sender address"))
    from_name = models.CharField(max_length=200, blank=True, verbose_name=_("sender name"))
    reply_to = models.CharField(max_length=320, blank=True, verbose_name=_("Reply-To"))
    lists = models.ManyToManyField(
        "contacts.ContactList", related_name="campaigns", blank=True, verbose_name=_("lists")
    )
    segments = models.ManyToManyField(
        "contacts.Segment",
        related_name="campaigns",
        blank=True,
        help_text=_("Also send to the contacts of these segments (each address once)."),
        verbose_name=_("segments"),
    )
    smtp_servers = models.ManyToManyField(
        "delivery.SmtpServer",
        blank=True,
        related_name="campaigns",
        help_text=_(
            "Empty: the enabled servers marked default (or EDM_SMTP_URL when none is). Traffic is split by the servers' weights; a failing server is rested."
        ),
        verbose_name=_("SMTP servers"),
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
        max_length=10,
        choices=CampaignStatus.choices,
        default=CampaignStatus.DRAFT,
        verbose_name=_("status"),
    )
    status_reason = models.TextField(blank=True, verbose_name=_("status reason"))
    scheduled_at = models.DateTimeField(null=True, blank=True, verbose_name=_("scheduled for"))
    total_recipients = models.PositiveIntegerField(default=0, verbose_name=_("total recipients"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated"))
    started_at = models.DateTimeField(null=True, blank=True, verbose_name=_("started"))
    # Set once the deliveries are materialized; a campaign is never finished before that.
    dispatched_at = models.DateTimeField(null=True, blank=True, verbose_name=_("dispatched"))
    # Set once the first messages' failure rate was judged (EDM_PAUSE_SAMPLE): a campaign is
    # auto-paused at most once, and a resume by a person is final.
    error_rate_judged = models.BooleanField(
        default=False, editable=False, verbose_name=_("error rate judged")
    )
    finished_at = models.DateTimeField(null=True, blank=True, verbose_name=_("finished"))

    class Meta:
        verbose_name = _("campaign")
        verbose_name_plural = _("campaigns")
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

    campaign = models.ForeignKey(
        Campaign, on_delete=models.CASCADE, related_name="attachments", verbose_name=_("campaign")
    )
    file = models.FileField(upload_to="attachments/%Y/%m/", verbose_name=_("file"))
    filename = models.CharField(
        max_length=255,
        blank=True,
        help_text=_("Empty: the file's name."),
        verbose_name=_("file name"),
    )
    content_type = models.CharField(
        max_length=100, blank=True, help_text=_("Empty: guessed."), verbose_name=_("content type")
    )
    content_id = models.CharField(
        max_length=100,
        blank=True,
        help_text=_('For an inline image: use it as src="cid:" followed by this ID.'),
        verbose_name=_("content ID"),
    )

    class Meta:
        verbose_name = _("attachment")
        verbose_name_plural = _("attachments")

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
