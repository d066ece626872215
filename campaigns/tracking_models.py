"""Tracking, reports and outgoing webhooks: links, pre-aggregated counters, webhook deliveries.

Counters are written in bulk by the tracking flush and the event tail (campaigns.tracking);
the report reads them instead of counting deliveries or events on every view.
"""

from __future__ import annotations

from django.db import models

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
        "campaigns.Campaign", on_delete=models.CASCADE, related_name="links"
    )
    url = models.TextField()
    url_hash = models.CharField(max_length=64)
    position = models.PositiveIntegerField(default=0)
    clicks = models.PositiveIntegerField(default=0)  # human clicks
    unique_clicks = models.PositiveIntegerField(default=0)  # human recipients
    machine_clicks = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "url_hash"], name="uniq_campaign_link")
        ]
        ordering = ["campaign", "position"]

    def __str__(self) -> str:
        return self.url


class CampaignStats(models.Model):
    """Counters of one campaign, updated in bulk; the report's funnel reads this row."""

    campaign = models.OneToOneField(
        "campaigns.Campaign", on_delete=models.CASCADE, primary_key=True, related_name="stats"
    )
    opens = models.PositiveIntegerField(default=0)  # human open hits
    unique_opens = models.PositiveIntegerField(default=0)  # recipients with a human open
    machine_opens = models.PositiveIntegerField(default=0)
    unique_machine_opens = models.PositiveIntegerField(default=0)  # recipients, machine only so far
    clicks = models.PositiveIntegerField(default=0)
    unique_clicks = models.PositiveIntegerField(default=0)
    machine_clicks = models.PositiveIntegerField(default=0)
    unique_machine_clicks = models.PositiveIntegerField(default=0)
    unsubscribes = models.PositiveIntegerField(default=0)
    complaints = models.PositiveIntegerField(default=0)
    # Bounce reports that arrived after the receiving server had said 250.
    async_bounces = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "campaign stats"

    def __str__(self) -> str:
        return f"Stats of campaign {self.campaign_id}"


class CampaignMinute(models.Model):
    """Per-minute buckets of one campaign, for the report's charts."""

    campaign = models.ForeignKey("campaigns.Campaign", on_delete=models.CASCADE, related_name="+")
    minute = models.DateTimeField()
    sent = models.PositiveIntegerField(default=0)
    bounced = models.PositiveIntegerField(default=0)
    opens = models.PositiveIntegerField(default=0)
    machine_opens = models.PositiveIntegerField(default=0)
    clicks = models.PositiveIntegerField(default=0)
    machine_clicks = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "minute"], name="uniq_campaign_minute")
        ]

    def __str__(self) -> str:
        return f"{self.campaign_id} at {self.minute:%Y-%m-%d %H:%M}"


class CampaignDomainStats(models.Model):
    """Per recipient domain counters of one campaign."""

    campaign = models.ForeignKey("campaigns.Campaign", on_delete=models.CASCADE, related_name="+")
    domain = models.CharField(max_length=255)
    sent = models.PositiveIntegerField(default=0)
    bounced = models.PositiveIntegerField(default=0)
    complaints = models.PositiveIntegerField(default=0)
    unique_opens = models.PositiveIntegerField(default=0)
    unique_clicks = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "domain"], name="uniq_campaign_domain")
        ]

    def __str__(self) -> str:
        return f"{self.domain} in {self.campaign_id}"


class Engagement(models.Model):
    """What one recipient did with the message (opens, clicks), kept per delivery."""

    delivery = models.OneToOneField(
        "delivery.Delivery", on_delete=models.CASCADE, primary_key=True, related_name="engagement"
    )
    campaign = models.ForeignKey("campaigns.Campaign", on_delete=models.CASCADE, related_name="+")
    opens = models.PositiveIntegerField(default=0)
    machine_opens = models.PositiveIntegerField(default=0)
    first_opened_at = models.DateTimeField(null=True, blank=True)  # first human open
    clicks = models.PositiveIntegerField(default=0)
    machine_clicks = models.PositiveIntegerField(default=0)
    first_clicked_at = models.DateTimeField(null=True, blank=True)
    unsubscribed_at = models.DateTimeField(null=True, blank=True)

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

    name = models.CharField(max_length=50, primary_key=True)
    last_id = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name} at {self.last_id}"


class WebhookEvent(models.TextChoices):
    SENT = "sent", "Sent"
    BOUNCED = "bounced", "Bounced"
    COMPLAINED = "complained", "Complained"
    OPENED = "opened", "Opened"
    CLICKED = "clicked", "Clicked"
    UNSUBSCRIBED = "unsubscribed", "Unsubscribed"


class Webhook(models.Model):
    """An outgoing webhook: events POSTed as JSON, signed with HMAC-SHA256."""

    name = models.CharField(max_length=100)
    url = models.URLField(max_length=1000)
    events = models.JSONField(
        default=list, help_text="Event names: " + ", ".join(WebhookEvent.values)
    )
    secret = models.CharField(max_length=200, help_text="Shared secret of the signature.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class WebhookDeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed (gave up)"


class WebhookDelivery(models.Model):
    """One event to one webhook, retried with exponential backoff until delivered or given up."""

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=20, choices=WebhookEvent.choices)
    payload = models.JSONField()
    status = models.CharField(
        max_length=10,
        choices=WebhookDeliveryStatus.choices,
        default=WebhookDeliveryStatus.PENDING,
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="webhook_due")]
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.event} to {self.webhook_id} ({self.status})"
