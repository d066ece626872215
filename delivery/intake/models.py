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

    received_at = models.DateTimeField(db_index=True)
    source = models.CharField(max_length=20, choices=BounceSource.choices)
    # SHA-256 of every byte received: the same report ingested twice is stored (and counted) once.
    sha256 = models.CharField(max_length=64, unique=True)
    raw = models.BinaryField(help_text=_("The first 256 KB of the report as received."))
    size = models.PositiveIntegerField(help_text=_("Size in bytes of the whole report."))
    # The SMTP envelope when the bounce server received it (RCPT may be the VERP address).
    envelope_from = models.CharField(max_length=320, blank=True)
    envelope_to = models.CharField(max_length=320, blank=True)
    kind = models.CharField(max_length=16, choices=OutcomeKind.choices, db_index=True)
    status = models.CharField(max_length=10, choices=BounceMessageStatus.choices, db_index=True)
    delivery = models.ForeignKey(
        "delivery.Delivery",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="bounce_messages",
    )
    # Which key tied the report to its delivery: verp, envid, header, message_id, recipient.
    matched_by = models.CharField(max_length=16, blank=True)
    summary = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
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

    message = models.ForeignKey(BounceMessage, on_delete=models.CASCADE, related_name="outcomes")
    created_at = models.DateTimeField(db_index=True)
    recipient = models.CharField(max_length=320, blank=True)
    kind = models.CharField(max_length=16, choices=OutcomeKind.choices)
    reason = models.CharField(max_length=40, blank=True)
    enhanced_status = models.CharField(max_length=16, blank=True)
    smtp_code = models.PositiveSmallIntegerField(null=True, blank=True)
    diagnostic = models.TextField(blank=True)
    reporting_mta = models.CharField(max_length=255, blank=True)
    delivery = models.ForeignKey(
        "delivery.Delivery",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="bounce_outcomes",
    )
    contact = models.ForeignKey(
        "contacts.Contact",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="bounce_outcomes",
    )
    # True when the policy counts it (soft "delayed" warnings and unmatched ones are not).
    counted = models.BooleanField(default=False)
    action = models.CharField(max_length=12, choices=BounceAction.choices, default="none")

    class Meta:
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

    kind = models.CharField(max_length=10, choices=PolicyKind.choices, unique=True)
    count = models.PositiveSmallIntegerField(
        default=1,
        help_text=_("Act when the contact reaches this many reports (distinct messages)."),
    )
    window_days = models.PositiveSmallIntegerField(
        default=0, help_text=_("Count reports of the last N days; 0 = ever.")
    )
    action = models.CharField(max_length=12, choices=PolicyAction.choices)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
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

    name = models.CharField(max_length=100, unique=True)
    protocol = models.CharField(
        max_length=4, choices=MailboxProtocol.choices, default=MailboxProtocol.IMAP
    )
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField(default=993)
    security = models.CharField(
        max_length=10, choices=MailboxSecurity.choices, default=MailboxSecurity.TLS
    )
    username = models.CharField(max_length=255)
    password_encrypted = models.TextField(blank=True, editable=False)
    folder = models.CharField(max_length=255, default="INBOX", help_text=_("IMAP only."))
    delete_after_processing = models.BooleanField(default=False)
    enabled = models.BooleanField(default=True)
    # IMAP: UIDs are only meaningful with their UIDVALIDITY (RFC 3501 section 2.3.1.1).
    uidvalidity = models.BigIntegerField(null=True, blank=True, editable=False)
    last_uid = models.BigIntegerField(default=0, editable=False)
    # POP3: the UIDLs already read that are still on the server (RFC 1939 UIDL).
    seen_uidls = models.JSONField(default=list, blank=True, editable=False)
    last_polled_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = _("mailboxes")
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.protocol}://{self.host}:{self.port})"

    def set_password(self, password: str) -> None:
        self.password_encrypted = crypto.encrypt(password)

    def get_password(self) -> str:
        return crypto.decrypt(self.password_encrypted)
