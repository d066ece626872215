"""API keys and transactional message requests (their outcome is a delivery.Delivery)."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils.translation import gettext_lazy as _


class Scope(models.TextChoices):
    MESSAGES_SEND = "messages:send", _("Send transactional messages")
    MESSAGES_READ = "messages:read", _("Read message status and events")
    CONTACTS_WRITE = "contacts:write", _("Create and update contacts and subscriptions")
    CAMPAIGNS_WRITE = "campaigns:write", _("Create, schedule and report campaigns")


class ApiKey(models.Model):
    """A key of one application: only the SHA-256 of the secret is stored, with a prefix."""

    application = models.CharField(
        _("application"), max_length=100, help_text=_("The application using the key.")
    )
    # The visible part ("sky_<prefix>_..."), enough to find the row and to tell keys apart.
    prefix = models.CharField(_("prefix"), max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(_("secret hash"), max_length=64, editable=False)
    scopes = models.JSONField(
        _("scopes"), default=list, help_text=_("e.g. messages:send, messages:read")
    )
    rate_limit_per_minute = models.PositiveIntegerField(
        _("rate limit per minute"),
        null=True,
        blank=True,
        help_text=_("Requests per minute; empty: EDM_API_RATE_PER_MINUTE."),
    )
    # Lowercase A-labels, matched exactly (a subdomain is listed on its own). Empty: any
    # domain, which is what keys made before the restriction existed keep.
    allowed_from_domains = models.JSONField(
        _("allowed From domains"),
        default=list,
        blank=True,
        help_text=_("From domains this key may send from, e.g. shop.example.com; empty: any."),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    last_used_at = models.DateTimeField(_("last used at"), null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(_("revoked at"), null=True, blank=True, editable=False)

    class Meta:
        verbose_name = _("API key")
        verbose_name_plural = _("API keys")
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
    TRANSACTIONAL = "transactional", _("Transactional")
    MARKETING = "marketing", _("Marketing")


class MessageSource(models.TextChoices):
    API = "api", _("REST API")
    RELAY = "relay", _("SMTP relay")


class TransactionalMessage(models.Model):
    """An application's request to send one message to one recipient: the API's record.

    What happened to the message (status, attempts, the SMTP reply, its events, bounces) is
    its `delivery`, a Delivery without a campaign, recorded and correlated like a
    campaign's. This row keeps what only the API knows: the key that sent it, the
    idempotency key, tags, the source, and the composed message (CRLF bytes, not yet
    DKIM-signed nor stamped with its delivery reference: both are done at send time).
    """

    public_id = models.UUIDField(_("public id"), default=uuid.uuid4, unique=True, editable=False)
    delivery = models.OneToOneField(
        "delivery.Delivery",
        on_delete=models.CASCADE,
        related_name="transactional",
        verbose_name=_("delivery"),
    )
    api_key = models.ForeignKey(
        ApiKey, on_delete=models.PROTECT, related_name="messages", verbose_name=_("API key")
    )
    idempotency_key = models.CharField(_("idempotency key"), max_length=255, blank=True)
    request_hash = models.CharField(_("request hash"), max_length=64, blank=True)
    source = models.CharField(
        _("source"), max_length=8, choices=MessageSource.choices, default="api"
    )
    category = models.CharField(
        _("category"), max_length=16, choices=Category.choices, default="transactional"
    )
    template = models.ForeignKey(
        "campaigns.Template",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        verbose_name=_("template"),
    )
    from_email = models.CharField(_("From address"), max_length=320)
    subject = models.CharField(_("subject"), max_length=998, blank=True)
    tags = models.JSONField(_("tags"), default=list, blank=True)
    raw = models.BinaryField(_("message source"))
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("transactional message")
        verbose_name_plural = _("transactional messages")
        constraints = [
            models.UniqueConstraint(
                fields=["api_key", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="uniq_message_idempotency_key",
            ),
        ]
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Message {self.public_id}"
