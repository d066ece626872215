"""Contacts, lists, subscriptions, suppressions and import jobs."""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Lower


class ContactStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    UNSUBSCRIBED = "unsubscribed", "Unsubscribed"
    BOUNCED = "bounced", "Bounced"
    COMPLAINED = "complained", "Complained"


class ContactList(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Contact(models.Model):
    # Normalized by contacts.normalize: trimmed, domain lower-cased (IDNA as Unicode). Unique
    # whatever its case through uniq_contact_email_ci alone: every lookup goes through
    # lower(email), and each extra index on this table slows imports (measured: about 40 %).
    email = models.CharField(max_length=320)
    name = models.CharField(max_length=300, blank=True)
    attributes = models.JSONField(default=dict, blank=True)
    # Not indexed: nearly every contact is active, so no query is served by an index on it.
    status = models.CharField(
        max_length=20, choices=ContactStatus.choices, default=ContactStatus.ACTIVE
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    lists = models.ManyToManyField(ContactList, through="Subscription", related_name="contacts")

    class Meta:
        ordering = ["-id"]
        constraints = [
            # One contact per address whatever its case: imports match on lower(email), and
            # this index makes that lookup (and ON CONFLICT) fast on SQLite and PostgreSQL.
            models.UniqueConstraint(Lower("email"), name="uniq_contact_email_ci"),
        ]

    def __str__(self) -> str:
        return self.email

    @property
    def domain(self) -> str:
        return self.email.rpartition("@")[2]


class SubscriptionStatus(models.TextChoices):
    SUBSCRIBED = "subscribed", "Subscribed"
    UNCONFIRMED = "unconfirmed", "Unconfirmed"
    UNSUBSCRIBED = "unsubscribed", "Unsubscribed"


class Subscription(models.Model):
    # No index of their own: uniq_subscription leads with contact, the (contact_list, status)
    # index with contact_list, and imports write one subscription per row.
    contact = models.ForeignKey(
        Contact, on_delete=models.CASCADE, related_name="subscriptions", db_index=False
    )
    contact_list = models.ForeignKey(
        ContactList, on_delete=models.CASCADE, related_name="subscriptions", db_index=False
    )
    status = models.CharField(
        max_length=20, choices=SubscriptionStatus.choices, default=SubscriptionStatus.SUBSCRIBED
    )
    source = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["contact", "contact_list"], name="uniq_subscription")
        ]
        indexes = [models.Index(fields=["contact_list", "status"])]

    def __str__(self) -> str:
        return f"{self.contact_id} in {self.contact_list_id} ({self.status})"


class SuppressionScope(models.TextChoices):
    ADDRESS = "address", "Address"
    DOMAIN = "domain", "Domain"


class SuppressionReason(models.TextChoices):
    UNSUBSCRIBE = "unsubscribe", "Unsubscribed"
    HARD_BOUNCE = "hard_bounce", "Hard bounce"
    COMPLAINT = "complaint", "Complaint"
    MANUAL = "manual", "Manual"
    IMPORT = "import", "Import"


class Suppression(models.Model):
    """An address or a whole domain that must never receive campaign mail."""

    value = models.CharField(max_length=320, help_text="An address or a domain, lower-cased.")
    scope = models.CharField(
        max_length=10, choices=SuppressionScope.choices, default=SuppressionScope.ADDRESS
    )
    reason = models.CharField(max_length=20, choices=SuppressionReason.choices)
    source = models.CharField(max_length=200, blank=True, help_text="Where it came from.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["value", "scope"], name="uniq_suppression"),
        ]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.value} ({self.get_reason_display()})"


class ImportMode(models.TextChoices):
    ADD_NEW = "add_new", "Add new contacts only"
    UPSERT = "upsert", "Add new and update existing"
    UNSUBSCRIBE = "unsubscribe", "Unsubscribe from the list"
    SUPPRESS = "suppress", "Add to the suppression list"


class ImportStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class ImportJob(models.Model):
    file = models.FileField(upload_to="imports/%Y/%m/")
    original_name = models.CharField(max_length=255, blank=True)
    contact_list = models.ForeignKey(
        ContactList, null=True, blank=True, on_delete=models.SET_NULL, related_name="imports"
    )
    mode = models.CharField(max_length=20, choices=ImportMode.choices, default=ImportMode.UPSERT)
    encoding = models.CharField(max_length=40, default="auto")
    mapping = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=10, choices=ImportStatus.choices, default=ImportStatus.PENDING
    )
    total_rows = models.PositiveIntegerField(default=0)
    processed_rows = models.PositiveIntegerField(default=0)
    created_count = models.PositiveIntegerField(default=0)
    updated_count = models.PositiveIntegerField(default=0)
    unchanged_count = models.PositiveIntegerField(default=0)
    rejected_count = models.PositiveIntegerField(default=0)
    rejected_by_reason = models.JSONField(default=dict, blank=True)
    # Rejected rows: [{"line": N, "reason": "...", "detail": "...", "email": "..."}].
    rejected_rows = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    # What the reader detected (shown on the job page and in reports).
    detected_encoding = models.CharField(max_length=40, blank=True)
    detected_delimiter = models.CharField(max_length=4, blank=True)
    # Optional rejections: {"reject_role": bool, "reject_disposable": bool}.
    options = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Import #{self.pk} {self.original_name}"


from contacts.segment_models import *  # noqa: E402,F401,F403
from contacts.signup_models import *  # noqa: E402,F401,F403
