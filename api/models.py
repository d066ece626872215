"""API keys, transactional messages and their append-only event history."""

from __future__ import annotations

import uuid

from django.db import models


class Scope(models.TextChoices):
    MESSAGES_SEND = "messages:send", "Send transactional messages"
    MESSAGES_READ = "messages:read", "Read message status and events"
    CONTACTS_WRITE = "contacts:write", "Create and update contacts and subscriptions"
    CAMPAIGNS_WRITE = "campaigns:write", "Create, schedule and report campaigns"


class ApiKey(models.Model):
    """A key of one application: only the SHA-256 of the secret is stored, with a prefix."""

    application = models.CharField(max_length=100, help_text="The application using the key.")
    # The visible part ("sky_<prefix>_..."), enough to find the row and to tell keys apart.
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    scopes = models.JSONField(default=list, help_text="e.g. messages:send, messages:read")
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests per minute; empty: EDM_API_RATE_PER_MINUTE."
    )
    # Lowercase A-labels, matched exactly (a subdomain is listed on its own). Empty: any
    # domain, which is what keys made before the restriction existed keep.
    allowed_from_domains = models.JSONField(
        default=list,
        blank=True,
        help_text="From domains this key may send from, e.g. shop.example.com; empty: any.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "API key"
        ordering = ["application", "-created_at"]

    def __str__(self) -> str:
        return f"{self.application} (sky_{self.prefix}_...)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    def allows_from_domain(self, domain: str) -> bool:
        """Whether this key may send From this (normalized) domain."""
        return not self.allowed_from_domains or domain in self.allowed_from_domains


class Category(models.TextChoices):
    TRANSACTIONAL = "transactional", "Transactional"
    MARKETING = "marketing", "Marketing"


class MessageStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    DEFERRED = "deferred", "Deferred"
    BOUNCED = "bounced", "Bounced"
    FAILED = "failed", "Failed"
    SUPPRESSED = "suppressed", "Suppressed"


class MessageSource(models.TextChoices):
    API = "api", "REST API"
    RELAY = "relay", "SMTP relay"


class TransactionalMessage(models.Model):
    """One message to one recipient, composed when accepted and sent on the priority queue."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    api_key = models.ForeignKey(ApiKey, on_delete=models.PROTECT, related_name="messages")
    idempotency_key = models.CharField(max_length=255, blank=True)
    request_hash = models.CharField(max_length=64, blank=True)
    source = models.CharField(max_length=8, choices=MessageSource.choices, default="api")
    category = models.CharField(max_length=16, choices=Category.choices, default="transactional")
    template = models.ForeignKey(
        "campaigns.Template", null=True, blank=True, on_delete=models.SET_NULL
    )
    from_email = models.CharField(max_length=320)
    to_email = models.CharField(max_length=320)
    subject = models.CharField(max_length=998, blank=True)
    tags = models.JSONField(default=list, blank=True)
    message_id = models.CharField(max_length=255, blank=True)
    # The composed message (CRLF bytes, not yet DKIM-signed: signed at send time).
    raw = models.BinaryField()
    status = models.CharField(
        max_length=12, choices=MessageStatus.choices, default=MessageStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    smtp_code = models.PositiveSmallIntegerField(null=True, blank=True)
    enhanced_status = models.CharField(max_length=16, blank=True)
    smtp_reply = models.TextField(blank=True)
    reason = models.CharField(max_length=40, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    first_attempt_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["api_key", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="uniq_message_idempotency_key",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="txmessage_due"),
            models.Index(fields=["status", "lease_expires_at"], name="txmessage_lease"),
        ]
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Message {self.public_id} ({self.status})"


class MessageEventKind(models.TextChoices):
    ACCEPTED = "accepted", "Accepted"
    ATTEMPT = "attempt", "Attempt"
    SENT = "sent", "Sent"
    DEFERRED = "deferred", "Deferred"
    BOUNCED = "bounced", "Bounced"
    FAILED = "failed", "Failed"
    SUPPRESSED = "suppressed", "Suppressed"
    RECLAIMED = "reclaimed", "Lease expired, reclaimed"
    UNSUBSCRIBE = "unsubscribe", "Unsubscribe"
    COMPLAINT = "complaint", "Complaint"


class MessageEvent(models.Model):
    """Append-only history of a transactional message."""

    message = models.ForeignKey(
        TransactionalMessage, on_delete=models.CASCADE, related_name="events"
    )
    kind = models.CharField(max_length=12, choices=MessageEventKind.choices)
    created_at = models.DateTimeField()
    smtp_code = models.PositiveSmallIntegerField(null=True, blank=True)
    enhanced_status = models.CharField(max_length=16, blank=True)
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["message", "created_at"])]

    def __str__(self) -> str:
        return f"{self.kind} at {self.created_at:%Y-%m-%d %H:%M:%S}"
