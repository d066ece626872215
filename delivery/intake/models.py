"""Bounce intake: every inbound report kept, its per-recipient outcomes, the policy, mailboxes."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

from delivery import crypto

__all__ = [
    "BounceAction",
    "BounceMessage",
    "BounceMessageStatus",
    "BounceOutcome",
    "BouncePolicy",
    "BounceSource",
    "Mailbox",
    "MailboxProtocol",
    "MailboxSecurity",
    "OutcomeKind",
    "PolicyAction",
    "PolicyKind",
]

# The first bytes of a report are what the classifier reads (headers, DSN fields, the returned
# headers); a 30 MB returned attachment is not worth keeping. The hash covers every byte.
RAW_KEEP_BYTES = 256 * 1024


class BounceSource(models.TextChoices):
    SMTP = "smtp", _("Bounce server (SMTP)")
    IMAP = "imap", _("Mailbox (IMAP)")
    POP3 = "pop3", _("Mailbox (POP3)")
    PIPE = "pipe", _("MTA pipe")
    WEBHOOK_SES = "webhook:ses", _("Webhook: Amazon SES")
    WEBHOOK_SENDGRID = "webhook:sendgrid", _("Webhook: SendGrid")
    WEBHOOK_MAILGUN = "webhook:mailgun", _("Webhook: Mailgun")
    WEBHOOK_POSTMARK = "webhook:postmark", _("Webhook: Postmark")


class BounceMessageStatus(models.TextChoices):
    APPLIED = "applied", _("Applied")
    UNMATCHED = "unmatched", _("No matching delivery")
    IGNORED = "ignored", _("Ignored (not a bounce)")
    UNTRUSTED = "untrusted", _("Untrusted reference (no action)")
    ERROR = "error", _("Error")


class OutcomeKind(models.TextChoices):
    """The classifier's kinds (mailkit.bounces.BounceKind), as stored values."""

    HARD = "hard", _("Hard bounce")
    SOFT = "soft", _("Soft bounce")
    COMPLAINT = "complaint", _("Complaint")
    AUTO_REPLY = "auto-reply", _("Auto-reply")
    NOT_BOUNCE = "not-a-bounce", _("Not a bounce")
    UNSUBSCRIBE = "unsubscribe", _("Unsubscribe request (List-Unsubscribe mailto)")


class BounceAction(models.TextChoices):
    """What applying one outcome did."""

    NONE = "none", _("Nothing")
    RECORDED = "recorded", _("Recorded on the delivery")
    COUNTED = "counted", _("Counted, below the policy threshold")
    SUPPRESSED = "suppressed", _("Address suppressed")
    UNSUBSCRIBED = "unsubscribed", _("Contact unsubscribed")
    UNMATCHED = "unmatched", _("No matching delivery")


class BounceMessage(models.Model):
    """One inbound report (a DSN, an ARF complaint, an auto-reply, a provider event), kept."""

    received_at = models.DateTimeField(db_index=True, verbose_name=_("received"))
    source = models.CharField(max_length=20, choices=BounceSource.choices, verbose_name=_("source"))
    # SHA-256 of every byte received: the same report ingested twice is stored (and counted) once.
    sha256 = models.CharField(max_length=64, unique=True, verbose_name=_("SHA-256"))
    raw = models.BinaryField(
        help_text=_("The first 256 KB of the report as received."), verbose_name=_("raw report")
    )
    size = models.PositiveIntegerField(
        help_text=_("Size in bytes of the whole report."), verbose_name=_("size")
    )
    # The SMTP envelope when the bounce server received it (RCPT may be the VERP address).
    envelope_from = models.CharField(max_length=320, blank=True, verbose_name=_("envelope sender"))
    envelope_to = models.CharField(max_length=320, blank=True, verbose_name=_("envelope recipient"))
    kind = models.CharField(
        max_length=16, choices=OutcomeKind.choices, db_index=True, verbose_name=_("kind")
    )
    status = models.CharField(
        max_length=10, choices=BounceMessageStatus.choices, db_index=True, verbose_name=_("status")
    )
    delivery = models.ForeignKey(
        "delivery.Delivery",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="bounce_messages",
        verbose_name=_("delivery"),
    )
    # Which key tied the report to its delivery: verp, envid, header, message_id, recipient.
    matched_by = models.CharField(max_length=16, blank=True, verbose_name=_("matched by"))
    summary = models.JSONField(default=dict, blank=True, verbose_name=_("summary"))
    error = models.TextField(blank=True, verbose_name=_("error"))

    class Meta:
        verbose_name = _("bounce report")
        verbose_name_plural = _("bounce reports")
        ordering = ["-received_at", "-id"]
        indexes = [
            models.Index(fields=["status", "received_at"], name="bounce_status_received"),
        ]

    def __str__(self) -> str:
        return f"Bounce report #{self.pk} ({self.kind}, {self.status})"

    @property
    def truncated(self) -> bool:
        return self.size > len(self.raw or b"")


class BounceOutcome(models.Model):
    """One recipient named by a report and what was done about it (append-only)."""

    message = models.ForeignKey(
        BounceMessage,
        on_delete=models.CASCADE,
        related_name="outcomes",
        verbose_name=_("bounce report"),
    )
    created_at = models.DateTimeField(db_index=True, verbose_name=_("created"))
    recipient = models.CharField(max_length=320, blank=True, verbose_name=_("recipient"))
    kind = models.CharField(max_length=16, choices=OutcomeKind.choices, verbose_name=_("kind"))
    reason = models.CharField(max_length=40, blank=True, verbose_name=_("reason"))
    enhanced_status = models.CharField(
        max_length=16, blank=True, verbose_name=_("enhanced status code")
    )
    smtp_code = models.PositiveSmallIntegerField(null=True, blank=True, verbose_name=_("SMTP code"))
    diagnostic = models.TextField(blank=True, verbose_name=_("diagnostic"))
    reporting_mta = models.CharField(max_length=255, blank=True, verbose_name=_("reporting MTA"))
    delivery = models.ForeignKey(
        "delivery.Delivery",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="bounce_outcomes",
        verbose_name=_("delivery"),
    )
    contact = models.ForeignKey(
        "contacts.Contact",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="bounce_outcomes",
        verbose_name=_("contact"),
    )
    # True when the policy counts it (soft "delayed" warnings and unmatched ones are not).
    counted = models.BooleanField(default=False, verbose_name=_("counted"))
    action = models.CharField(
        max_length=12, choices=BounceAction.choices, default="none", verbose_name=_("action")
    )

    class Meta:
        verbose_name = _("bounce outcome")
        verbose_name_plural = _("bounce outcomes")
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["contact", "kind", "created_at"], name="bounce_outcome_count"),
        ]

    def __str__(self) -> str:
        return f"{self.kind}/{self.reason} ({self.action})"


class PolicyKind(models.TextChoices):
    HARD = "hard", _("Hard bounce")
    SOFT = "soft", _("Soft bounce")
    COMPLAINT = "complaint", _("Complaint")


class PolicyAction(models.TextChoices):
    NONE = "none", _("Do nothing (record only)")
    UNSUBSCRIBE = "unsubscribe", _("Unsubscribe the contact")
    SUPPRESS = "suppress", _("Suppress the address")


class BouncePolicy(models.Model):
    """What to do with a contact after `count` reports of `kind` within `window_days`."""

    kind = models.CharField(
        max_length=10, choices=PolicyKind.choices, unique=True, verbose_name=_("kind")
    )
    count = models.PositiveSmallIntegerField(
        default=1,
        help_text=_("Act when the contact reaches this many reports (distinct messages)."),
        verbose_name=_("count"),
    )
    window_days = models.PositiveSmallIntegerField(
        default=0,
        help_text=_("Count reports of the last N days; 0 = ever."),
        verbose_name=_("window (days)"),
    )
    action = models.CharField(max_length=12, choices=PolicyAction.choices, verbose_name=_("action"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated"))

    class Meta:
        verbose_name = _("bounce policy")
        verbose_name_plural = _("bounce policies")
        ordering = ["kind"]

    def __str__(self) -> str:
        window = f" in {self.window_days} days" if self.window_days else ""
        return f"{self.get_kind_display()}: {self.count}{window} -> {self.get_action_display()}"


class MailboxProtocol(models.TextChoices):
    IMAP = "imap", _("IMAP")
    POP3 = "pop3", _("POP3")


class MailboxSecurity(models.TextChoices):
    TLS = "tls", _("Implicit TLS")
    STARTTLS = "starttls", _("STARTTLS")
    NONE = "none", _("None (loopback only)")


class Mailbox(models.Model):
    """A mailbox that receives bounce reports, polled over IMAP or POP3."""

    name = models.CharField(max_length=100, unique=True, verbose_name=_("name"))
    protocol = models.CharField(
        max_length=4,
        choices=MailboxProtocol.choices,
        default=MailboxProtocol.IMAP,
        verbose_name=_("protocol"),
    )
    host = models.CharField(max_length=255, verbose_name=_("host"))
    port = models.PositiveIntegerField(default=993, verbose_name=_("port"))
    security = models.CharField(
        max_length=10,
        choices=MailboxSecurity.choices,
        default=MailboxSecurity.TLS,
        verbose_name=_("security"),
    )
    username = models.CharField(max_length=255, verbose_name=_("user name"))
    password_encrypted = models.TextField(
        blank=True, editable=False, verbose_name=_("password (encrypted)")
    )
    folder = models.CharField(
        max_length=255, default="INBOX", help_text=_("IMAP only."), verbose_name=_("folder")
    )
    delete_after_processing = models.BooleanField(
        default=False, verbose_name=_("delete after processing")
    )
    enabled = models.BooleanField(default=True, verbose_name=_("enabled"))
    # IMAP: UIDs are only meaningful with their UIDVALIDITY (RFC 3501 section 2.3.1.1).
    uidvalidity = models.BigIntegerField(
        null=True, blank=True, editable=False, verbose_name=_("UIDVALIDITY")
    )
    last_uid = models.BigIntegerField(default=0, editable=False, verbose_name=_("last UID"))
    # POP3: the UIDLs already read that are still on the server (RFC 1939 UIDL).
    seen_uidls = models.JSONField(
        default=list, blank=True, editable=False, verbose_name=_("seen UIDLs")
    )
    last_polled_at = models.DateTimeField(
        null=True, blank=True, editable=False, verbose_name=_("last polled")
    )
    last_error = models.TextField(blank=True, editable=False, verbose_name=_("last error"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created"))

    class Meta:
        verbose_name = _("bounce mailbox")
        verbose_name_plural = _("mailboxes")
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.protocol}://{self.host}:{self.port})"

    def set_password(self, password: str) -> None:
        self.password_encrypted = crypto.encrypt(password)

    def get_password(self) -> str:
        return crypto.decrypt(self.password_encrypted)
