"""SMTP servers, per-recipient deliveries and their append-only event history."""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Lower
from django.utils.translation import gettext_lazy as _

from delivery import crypto


class Security(models.TextChoices):
    NONE = "none", _("None (plain text)")
    STARTTLS = "starttls", "STARTTLS"
    TLS = "tls", _("Implicit TLS")


class RatePeriod(models.TextChoices):
    SECOND = "second", _("per second")
    MINUTE = "minute", _("per minute")
    HOUR = "hour", _("per hour")


PERIOD_SECONDS = {RatePeriod.SECOND: 1, RatePeriod.MINUTE: 60, RatePeriod.HOUR: 3600}


class SmtpServer(models.Model):
    name = models.CharField(max_length=100, unique=True)
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField(default=587)
    security = models.CharField(max_length=10, choices=Security.choices, default=Security.STARTTLS)
    username = models.CharField(max_length=255, blank=True)
    password_encrypted = models.TextField(blank=True, editable=False)
    pool_size = models.PositiveSmallIntegerField(default=4)
    rate_limit = models.PositiveIntegerField(
        default=0, help_text="Messages per rate period across all workers; 0 = unlimited."
    )
    rate_period = models.CharField(max_length=10, choices=RatePeriod.choices, default="second")
    daily_quota = models.PositiveIntegerField(default=0, help_text="0 = unlimited.")
    weight = models.PositiveSmallIntegerField(default=1)
    enabled = models.BooleanField(default=True)
    is_default = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.host}:{self.port})"

    def set_password(self, password: str) -> None:
        self.password_encrypted = crypto.encrypt(password)

    def get_password(self) -> str:
        return crypto.decrypt(self.password_encrypted)

    @property
    def rate_per_second(self) -> float:
        return self.rate_limit / PERIOD_SECONDS[self.rate_period] if self.rate_limit else 0.0


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    SENDING = "sending", _("Sending")
    SENT = "sent", _("Sent")
    DEFERRED = "deferred", _("Deferred")
    BOUNCED = "bounced", _("Bounced")
    FAILED = "failed", _("Failed")
    SUPPRESSED = "suppressed", _("Suppressed")
    CANCELLED = "cancelled", _("Cancelled")
    UNKNOWN = "unknown", _("Unknown")


# Statuses that still need work; a campaign is finished when none of its rows has one.
OPEN_STATUSES = (DeliveryStatus.PENDING, DeliveryStatus.SENDING, DeliveryStatus.DEFERRED)


class Delivery(models.Model):
    """One message to one recipient: the source of truth for what happened to them.

    A campaign's recipient has its campaign and contact; a transactional message (the API's,
    the relay's) has neither: its request (key, idempotency, tags, the composed message) is
    the API's record pointing here. Both go through the same statuses, events, recorder and
    bounce correlation.
    """

    # No index of its own: the unique (campaign, contact) constraint leads with it. Every
    # index here is rewritten on each status change, twice per message.
    campaign = models.ForeignKey(
        "campaigns.Campaign",
        on_delete=models.CASCADE,
        related_name="deliveries",
        db_index=False,
        null=True,
        blank=True,
        verbose_name=_("campaign"),
    )
    contact = models.ForeignKey(
        "contacts.Contact",
        on_delete=models.CASCADE,
        related_name="deliveries",
        null=True,
        blank=True,
        verbose_name=_("contact"),
    )
    email = models.CharField(_("address"), max_length=320)
    status = models.CharField(
        _("status"), max_length=12, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(_("next attempt at"), null=True, blank=True)
    lease_expires_at = models.DateTimeField(_("lease expires at"), null=True, blank=True)
    message_id = models.CharField(_("Message-ID"), max_length=255, blank=True)
    smtp_code = models.PositiveSmallIntegerField(_("SMTP code"), null=True, blank=True)
    enhanced_status = models.CharField(_("enhanced status"), max_length=16, blank=True)
    smtp_reply = models.TextField(_("server reply"), blank=True)
    # Why the status is what it is, in the bounce classifier's vocabulary (unknown_user, ...).
    reason = models.CharField(_("reason"), max_length=40, blank=True)
    first_attempt_at = models.DateTimeField(_("first attempt at"), null=True, blank=True)
    sent_at = models.DateTimeField(_("sent at"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("delivery")
        verbose_name_plural = _("deliveries")
        constraints = [
            models.UniqueConstraint(fields=["campaign", "contact"], name="uniq_delivery"),
        ]
        indexes = [
            # With the id, a claim's id range is part of the index condition: a batch
            # task reads its own rows, not every pending row of the campaign.
            models.Index(fields=["campaign", "status", "id"], name="delivery_campaign_status_id"),
            # Partial: only deferred rows wait for a retry and only sending rows hold a
            # lease, so the other status changes never touch these indexes.
            models.Index(
                fields=["next_attempt_at"],
                name="delivery_due",
                condition=models.Q(status="deferred"),
            ),
            models.Index(
                fields=["lease_expires_at"],
                name="delivery_lease",
                condition=models.Q(status="sending"),
            ),
            # A transactional recipient with no contact is a person by address: the bounce
            # policy counts their hard bounces by lower(email). Campaign rows stay out.
            models.Index(
                Lower("email"),
                name="delivery_tx_email",
                condition=models.Q(campaign__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"Delivery #{self.pk} ({self.status})"


class DeliveryAlias(models.Model):
    """A key that named a message before it was a delivery, kept so its reports still match.

    Transactional messages accepted before they became deliveries (migration api 0005) went
    out with keys of their own: the return path `bounces+<message id>-<tag>` made with the
    transactional VERP secret, and `tx-<public id>.<tag>` as ENVID and X-Skylark-Delivery.
    Their bounces may arrive for days; the intake checks the tag, then looks the key up here
    ("txpk-<message id>", "tx-<public id>"). New messages carry delivery keys only.
    """

    key = models.CharField(max_length=80, unique=True)
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="+")

    def __str__(self) -> str:
        return f"{self.key} -> delivery #{self.delivery_id}"


class DeliveryLease(models.Model):
    """A batch task's hold on a range of one campaign's deliveries, by delivery id.

    The rows of a leased range stay pending while the task sends them: claiming a range is
    one row here instead of a rewrite of every delivery (a claim used to cost a third of
    the database's work per message). ``read_to`` is the highest delivery id the task has
    read for sending; when the lease expires (its worker died) the rows up to it that are
    still open are treated as the old per-row leases were (reclaimed, the attempt counted),
    and the rest of the range is simply pending again.
    """

    campaign = models.ForeignKey(
        "campaigns.Campaign", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    id_from = models.BigIntegerField()
    id_to = models.BigIntegerField()
    read_to = models.BigIntegerField(null=True, blank=True)
    # The task that holds it (its Celery id): the same task delivered again after its
    # worker died takes its own lease over at once instead of waiting for it to expire.
    holder = models.CharField(max_length=64)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    # Not stored: set by deliveries_lease when it took a dead task's lease over, the last id
    # of the rows that came back from it (one of them may be what killed that task).
    suspects_to: int | None = None

    class Meta:
        indexes = [
            models.Index(fields=["campaign", "id_from"], name="delivery_lease_range"),
            models.Index(fields=["expires_at"], name="delivery_lease_expiry"),
        ]

    def __str__(self) -> str:
        return f"Lease on deliveries {self.id_from}-{self.id_to} of campaign {self.campaign_id}"


class EventKind(models.TextChoices):
    ATTEMPT = "attempt", _("Attempt")
    SENT = "sent", _("Sent")
    DEFERRED = "deferred", _("Deferred")
    BOUNCED = "bounced", _("Bounced")
    FAILED = "failed", _("Failed")
    SUPPRESSED = "suppressed", _("Suppressed")
    RECLAIMED = "reclaimed", _("Lease expired, reclaimed")
    COMPLAINT = "complaint", _("Complaint")
    OPEN = "open", _("Open")
    CLICK = "click", _("Click")
    UNSUBSCRIBE = "unsubscribe", _("Unsubscribe")


class DeliveryEvent(models.Model):
    """Append-only history of a delivery."""

    # Indexed by (delivery, created_at) below, which also serves the foreign key.
    delivery = models.ForeignKey(
        Delivery,
        on_delete=models.CASCADE,
        related_name="events",
        db_index=False,
        verbose_name=_("delivery"),
    )
    kind = models.CharField(_("kind"), max_length=12, choices=EventKind.choices)
    created_at = models.DateTimeField(
        _("time"),
    )
    smtp_code = models.PositiveSmallIntegerField(_("SMTP code"), null=True, blank=True)
    enhanced_status = models.CharField(_("enhanced status"), max_length=16, blank=True)
    detail = models.TextField(_("detail"), blank=True)
    data = models.JSONField(_("data"), default=dict, blank=True)

    class Meta:
        verbose_name = _("delivery event")
        verbose_name_plural = _("delivery events")
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["delivery", "created_at"])]

    def __str__(self) -> str:
        return f"{self.kind} at {self.created_at:%Y-%m-%d %H:%M:%S}"


class DkimAlgorithm(models.TextChoices):
    RSA = "rsa", "RSA-SHA256 (2048 bits)"
    ED25519 = "ed25519", "Ed25519-SHA256"


class DkimKey(models.Model):
    """A DKIM signing key for one sending domain; messages from that domain are signed."""

    domain = models.CharField(max_length=255)
    selector = models.CharField(max_length=63, default="skylark")
    algorithm = models.CharField(
        max_length=10, choices=DkimAlgorithm.choices, default=DkimAlgorithm.RSA
    )
    private_key_encrypted = models.TextField(editable=False)
    public_key = models.TextField(editable=False, help_text="Base64, the p= tag of the record.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "DKIM key"
        constraints = [
            models.UniqueConstraint(fields=["domain", "selector"], name="uniq_dkim_selector"),
        ]
        ordering = ["domain", "-created_at"]

    def __str__(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def set_private_key(self, pem: bytes) -> None:
        self.private_key_encrypted = crypto.encrypt(pem.decode())

    def get_private_key(self) -> bytes:
        return crypto.decrypt(self.private_key_encrypted).encode()


class DomainRateLimit(models.Model):
    """How fast all workers together may send to one mailbox provider's domains."""

    name = models.CharField(_("name"), max_length=100, unique=True, help_text=_("e.g. Gmail"))
    domains = models.TextField(
        _("domains"),
        help_text=_("Recipient domains sharing this limit, comma or space separated."),
    )
    rate = models.PositiveIntegerField(
        _("rate"), help_text=_("Messages per period, across all workers.")
    )
    period = models.CharField(
        _("period"), max_length=10, choices=RatePeriod.choices, default="second"
    )
    enabled = models.BooleanField(_("enabled"), default=True)

    class Meta:
        verbose_name = _("domain rate limit")
        verbose_name_plural = _("domain rate limits")
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name}: {self.rate} {self.get_period_display()}"

    def domain_list(self) -> list[str]:
        return [d.strip().lower() for d in self.domains.replace(",", " ").split() if d.strip()]

    @property
    def per_second(self) -> float:
        return self.rate / PERIOD_SECONDS[self.period]


from delivery.intake.models import *  # noqa: E402,F401,F403
from delivery.monitor.models import *  # noqa: E402,F401,F403
