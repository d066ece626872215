"""Tracking, reports and outgoing webhooks: links, pre-aggregated counters, webhook deliveries.

Counters are written in bulk by the tracking flush and the event tail (campaigns.tracking);
the report reads them instead of counting deliveries or events on every view.
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

__all__ = [
    "CampaignDomainStats",
    "CampaignLink",
    "CampaignMinute",
    "CampaignStats",
    "Engagement",
    "TrackingCursor",
    "Webhook",
    "WebhookDelivery",
    "WebhookDeliveryStatus",
    "WebhookEvent",
]


class CampaignLink(models.Model):
    """A link of a campaign's HTML, registered once at prepare time: the only click targets."""

    campaign = models.ForeignKey(
        "campaigns.Campaign",
        on_delete=models.CASCADE,
        related_name="links",
        verbose_name=_("campaign"),
    )
    url = models.TextField(verbose_name=_("URL"))
    url_hash = models.CharField(max_length=64, verbose_name=_("URL hash"))
    position = models.PositiveIntegerField(default=0, verbose_name=_("position"))
    clicks = models.PositiveIntegerField(default=0, verbose_name=_("clicks"))  # human clicks
    unique_clicks = models.PositiveIntegerField(
        default=0, verbose_name=_("unique clicks")
    )  # human recipients
    machine_clicks = models.PositiveIntegerField(default=0, verbose_name=_("machine clicks"))

    class Meta:
        verbose_name = _("campaign link")
        verbose_name_plural = _("campaign links")
        constraints = [
            models.UniqueConstraint(fields=["campaign", "url_hash"], name="uniq_campaign_link")
        ]
        ordering = ["campaign", "position"]

    def __str__(self) -> str:
        return self.url


class CampaignStats(models.Model):
    """Counters of one campaign, updated in bulk; the report's funnel reads this row."""

    campaign = models.OneToOneField(
        "campaigns.Campaign",
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="stats",
        verbose_name=_("campaign"),
    )
    opens = models.PositiveIntegerField(default=0, verbose_name=_("opens"))  # human open hits
    unique_opens = models.PositiveIntegerField(
        default=0, verbose_name=_("unique opens")
    )  # recipients with a human open
    machine_opens = models.PositiveIntegerField(default=0, verbose_name=_("machine opens"))
    unique_machine_opens = models.PositiveIntegerField(
        default=0, verbose_name=_("unique machine opens")
    )  # recipients, machine only so far
    clicks = models.PositiveIntegerField(default=0, verbose_name=_("clicks"))
    unique_clicks = models.PositiveIntegerField(default=0, verbose_name=_("unique clicks"))
    machine_clicks = models.PositiveIntegerField(default=0, verbose_name=_("machine clicks"))
    unique_machine_clicks = models.PositiveIntegerField(
        default=0, verbose_name=_("unique machine clicks")
    )
    unsubscribes = models.PositiveIntegerField(default=0, verbose_name=_("unsubscribes"))
    complaints = models.PositiveIntegerField(default=0, verbose_name=_("complaints"))
    # Bounce reports that arrived after the receiving server had said 250.
    async_bounces = models.PositiveIntegerField(default=0, verbose_name=_("asynchronous bounces"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated"))

    class Meta:
        verbose_name = _("campaign statistics")
        verbose_name_plural = _("campaign statistics")

    def __str__(self) -> str:
        return f"Stats of campaign {self.campaign_id}"


class CampaignMinute(models.Model):
    """Per-minute buckets of one campaign, for the report's charts."""

    campaign = models.ForeignKey(
        "campaigns.Campaign", on_delete=models.CASCADE, related_name="+", verbose_name=_("campaign")
    )
    minute = models.DateTimeField(verbose_name=_("minute"))
    sent = models.PositiveIntegerField(default=0, verbose_name=_("sent"))
    bounced = models.PositiveIntegerField(default=0, verbose_name=_("bounced"))
    opens = models.PositiveIntegerField(default=0, verbose_name=_("opens"))
    machine_opens = models.PositiveIntegerField(default=0, verbose_name=_("machine opens"))
    clicks = models.PositiveIntegerField(default=0, verbose_name=_("clicks"))
    machine_clicks = models.PositiveIntegerField(default=0, verbose_name=_("machine clicks"))

    class Meta:
        verbose_name = _("campaign minute")
        verbose_name_plural = _("campaign minutes")
        constraints = [
            models.UniqueConstraint(fields=["campaign", "minute"], name="uniq_campaign_minute")
        ]

    def __str__(self) -> str:
        return f"{self.campaign_id} at {self.minute:%Y-%m-%d %H:%M}"


class CampaignDomainStats(models.Model):
    """Per recipient domain counters of one campaign."""

    campaign = models.ForeignKey(
        "campaigns.Campaign", on_delete=models.CASCADE, related_name="+", verbose_name=_("campaign")
    )
    domain = models.CharField(max_length=255, verbose_name=_("domain"))
    sent = models.PositiveIntegerField(default=0, verbose_name=_("sent"))
    bounced = models.PositiveIntegerField(default=0, verbose_name=_("bounced"))
    complaints = models.PositiveIntegerField(default=0, verbose_name=_("complaints"))
    unique_opens = models.PositiveIntegerField(default=0, verbose_name=_("unique opens"))
    unique_clicks = models.PositiveIntegerField(default=0, verbose_name=_("unique clicks"))

    class Meta:
        verbose_name = _("domain statistics")
        verbose_name_plural = _("domain statistics")
        constraints = [
            models.UniqueConstraint(fields=["campaign", "domain"], name="uniq_campaign_domain")
        ]

    def __str__(self) -> str:
        return f"{self.domain} in {self.campaign_id}"


class Engagement(models.Model):
    """What one recipient did with the message (opens, clicks), kept per delivery."""

    delivery = models.OneToOneField(
        "delivery.Delivery",
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="engagement",
        verbose_name=_("delivery"),
    )
    campaign = models.ForeignKey(
        "campaigns.Campaign", on_delete=models.CASCADE, related_name="+", verbose_name=_("campaign")
    )
    opens = models.PositiveIntegerField(default=0, verbose_name=_("opens"))
    machine_opens = models.PositiveIntegerField(default=0, verbose_name=_("machine opens"))
    first_opened_at = models.DateTimeField(
        null=True, blank=True, verbose_name=_("first opened")
    )  # first human open
    clicks = models.PositiveIntegerField(default=0, verbose_name=_("clicks"))
    machine_clicks = models.PositiveIntegerField(default=0, verbose_name=_("machine clicks"))
    first_clicked_at = models.DateTimeField(null=True, blank=True, verbose_name=_("first clicked"))
    unsubscribed_at = models.DateTimeField(null=True, blank=True, verbose_name=_("unsubscribed"))

    class Meta:
        verbose_name = _("engagement")
        verbose_name_plural = _("engagements")

    def __str__(self) -> str:
        return f"Engagement of delivery {self.delivery_id}"


# What the open and click hits write on an Engagement (the report's export shows them too).
ENGAGEMENT_HIT_FIELDS = (
    "opens",
    "machine_opens",
    "first_opened_at",
    "clicks",
    "machine_clicks",
    "first_clicked_at",
)


class TrackingCursor(models.Model):
    """How far the event tail has read DeliveryEvent (by id)."""

    name = models.CharField(max_length=50, primary_key=True, verbose_name=_("name"))
    last_id = models.BigIntegerField(default=0, verbose_name=_("last ID"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated"))

    class Meta:
        verbose_name = _("tracking cursor")
        verbose_name_plural = _("tracking cursors")

    def __str__(self) -> str:
        return f"{self.name} at {self.last_id}"


class WebhookEvent(models.TextChoices):
    SENT = "sent", _("Sent")
    BOUNCED = "bounced", _("Bounced")
    COMPLAINED = "complained", _("Complained")
    OPENED = "opened", _("Opened")
    CLICKED = "clicked", _("Clicked")
    UNSUBSCRIBED = "unsubscribed", _("Unsubscribed")


class Webhook(models.Model):
    """An outgoing webhook: events POSTed as JSON, signed with HMAC-SHA256."""

    name = models.CharField(max_length=100, verbose_name=_("name"))
    url = models.URLField(max_length=1000, verbose_name=_("URL"))
    events = models.JSONField(
        default=list,
        help_text="Event names: " + ", ".join(WebhookEvent.values),
        verbose_name=_("events"),
    )
    secret = models.CharField(
        max_length=200, help_text=_("Shared secret of the signature."), verbose_name=_("secret")
    )
    enabled = models.BooleanField(default=True, verbose_name=_("enabled"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created"))

    class Meta:
        verbose_name = _("webhook")
        verbose_name_plural = _("webhooks")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class WebhookDeliveryStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    DELIVERED = "delivered", _("Delivered")
    FAILED = "failed", _("Failed (gave up)")


class WebhookDelivery(models.Model):
    """One event to one webhook, retried with exponential backoff until delivered or given up."""

    webhook = models.ForeignKey(
        Webhook, on_delete=models.CASCADE, related_name="deliveries", verbose_name=_("webhook")
    )
    event = models.CharField(max_length=20, choices=WebhookEvent.choices, verbose_name=_("event"))
    payload = models.JSONField(verbose_name=_("payload"))
    status = models.CharField(
        max_length=10,
        choices=WebhookDeliveryStatus.choices,
        default=WebhookDeliveryStatus.PENDING,
        verbose_name=_("status"),
    )
    attempts = models.PositiveSmallIntegerField(default=0, verbose_name=_("attempts"))
    next_attempt_at = models.DateTimeField(verbose_name=_("next attempt"))
    last_status_code = models.PositiveSmallIntegerField(
        null=True, blank=True, verbose_name=_("last status code")
    )
    last_error = models.TextField(blank=True, verbose_name=_("last error"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created"))
    delivered_at = models.DateTimeField(null=True, blank=True, verbose_name=_("delivered"))

    class Meta:
        verbose_name = _("webhook delivery")
        verbose_name_plural = _("webhook deliveries")
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="webhook_due")]
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.event} to {self.webhook_id} ({self.status})"
