"""Contacts, lists, subscriptions, suppressions and import jobs."""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Lower
from django.utils.translation import gettext_lazy as _


class ContactStatus(models.TextChoices):
    ACTIVE = "active", _("Active")
    UNSUBSCRIBED = "unsubscribed", _("Unsubscribed")
    BOUNCED = "bounced", _("Bounced")
    COMPLAINED = "complained", _("Complained")


class ContactList(models.Model):
    name = models.CharField(max_length=200, unique=True, verbose_name=_("name"))
    description = models.TextField(blank=True, verbose_name=_("description"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created"))

    class Meta:
        verbose_name = _("contact list")
        verbose_name_plural = _("contact lists")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Contact(models.Model):
    # Normalized by contacts.normalize: trimmed, domain lower-cased (IDNA as Unicode). Unique
    # whatever its case through uniq_contact_email_ci alone: every lookup goes through
    # lower(email), and each extra index on this table slows imports (measured: about 40 %).
    email = models.CharField(max_length=320, verbose_name=_("email address"))
    name = models.CharField(max_length=300, blank=True, verbose_name=_("name"))
    attributes = models.JSONField(default=dict, blank=True, verbose_name=_("attributes"))
    # Not indexed: nearly every contact is active, so no query is served by an index on it.
    status = models.CharField(
        max_length=20,
        choices=ContactStatus.choices,
        default=ContactStatus.ACTIVE,
        verbose_name=_("status"),
    )
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated"))
    lists = models.ManyToManyField(
        ContactList, through="Subscription", related_name="contacts", verbose_name=_("lists")
    )

    class Meta:
        verbose_name = _("contact")
        verbose_name_plural = _("contacts")
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
    SUBSCRIBED = "subscribed", _("Subscribed")
    UNCONFIRMED = "unconfirmed", _("Unconfirmed")
    UNSUBSCRIBED = "unsubscribed", _("Unsubscribed")


class Subscription(models.Model):
    # No index of their own: uniq_subscription leads with contact, the (contact_list, status)
    # index with contact_list, and imports write one subscription per row.
    contact = models.ForeignKey(
        Contact,
        on_delete=models.CASCADE,
        related_name="subscriptions",
        db_index=False,
        verbose_name=_("contact"),
    )
    contact_list = models.ForeignKey(
        ContactList,
        on_delete=models.CASCADE,
        related_name="subscriptions",
        db_index=False,
        verbose_name=_("list"),
    )
    status = models.CharField(
        max_length=20,
        choices=SubscriptionStatus.choices,
        default=SubscriptionStatus.SUBSCRIBED,
        verbose_name=_("status"),
    )
    source = models.CharField(max_length=100, blank=True, verbose_name=_("source"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated"))

    class Meta:
        verbose_name = _("subscription")
        verbose_name_plural = _("subscriptions")
        constraints = [
            models.UniqueConstraint(fields=["contact", "contact_list"], name="uniq_subscription")
        ]
        indexes = [models.Index(fields=["contact_list", "status"])]

    def __str__(self) -> str:
        return f"{self.contact_id} in {self.contact_list_id} ({self.status})"


class SuppressionScope(models.TextChoices):
    ADDRESS = "address", _("Address")
    DOMAIN = "domain", _("Domain")


class SuppressionReason(models.TextChoices):
    UNSUBSCRIBE = "unsubscribe", _("Unsubscribed")
    HARD_BOUNCE = "hard_bounce", _("Hard bounce")
    COMPLAINT = "complaint", _("Complaint")
    MANUAL = "manual", _("Manual")
    IMPORT = "import", _("Import")


class Suppression(models.Model):
    """An address or a whole domain that must never receive campaign mail."""

    value = models.CharField(
        max_length=320, help_text=_("An address or a domain, lower-cased."), verbose_name=_("value")
    )
    scope = models.CharField(
        max_length=10,
        choices=SuppressionScope.choices,
        default=SuppressionScope.ADDRESS,
        verbose_name=_("scope"),
    )
    reason = models.CharField(
        max_length=20, choices=SuppressionReason.choices, verbose_name=_("reason")
    )
    source = models.CharField(
        max_length=200, blank=True, help_text=_("Where it came from."), verbose_name=_("source")
    )
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created"))

    class Meta:
        verbose_name = _("suppression")
        verbose_name_plural = _("suppressions")
        constraints = [
            models.UniqueConstraint(fields=["value", "scope"], name="uniq_suppression"),
        ]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.value} ({self.get_reason_display()})"


class ImportMode(models.TextChoices):
    ADD_NEW = "add_new", _("Add new contacts only")
    UPSERT = "upsert", _("Add new and update existing")
    UNSUBSCRIBE = "unsubscribe", _("Unsubscribe from the list")
    SUPPRESS = "suppress", _("Add to the suppression list")


class ImportStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    RUNNING = "running", _("Running")
    DONE = "done", _("Done")
    FAILED = "failed", _("Failed")


class ImportJob(models.Model):
    file = models.FileField(upload_to="imports/%Y/%m/", verbose_name=_("file"))
    original_name = models.CharField(max_length=255, blank=True, verbose_name=_("file name"))
    contact_list = models.ForeignKey(
        ContactList,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="imports",
        verbose_name=_("list"),
    )
    mode = models.CharField(
        max_length=20,
        choices=ImportMode.choices,
        default=ImportMode.UPSERT,
        verbose_name=_("import mode"),
    )
    encoding = models.CharField(max_length=40, default="auto", verbose_name=_("encoding"))
    mapping = models.JSONField(default=dict, blank=True, verbose_name=_("column mapping"))
    status = models.CharField(
        max_length=10,
        choices=ImportStatus.choices,
        default=ImportStatus.PENDING,
        verbose_name=_("status"),
    )
    total_rows = models.PositiveIntegerField(default=0, verbose_name=_("total rows"))
    processed_rows = models.PositiveIntegerField(default=0, verbose_name=_("rows processed"))
    created_count = models.PositiveIntegerField(default=0, verbose_name=_("created"))
    updated_count = models.PositiveIntegerField(default=0, verbose_name=_("updated"))
    unchanged_count = models.PositiveIntegerField(default=0, verbose_name=_("unchanged"))
    rejected_count = models.PositiveIntegerField(default=0, verbose_name=_("rejected"))
    rejected_by_reason = models.JSONField(
        default=dict, blank=True, verbose_name=_("rejected by reason")
    )
    # Rejected rows: [{"line": N, "reason": "...", "detail": "...", "email": "..."}].
    rejected_rows = models.JSONField(default=list, blank=True, verbose_name=_("rejected rows"))
    error = models.TextField(blank=True, verbose_name=_("error"))
    # What the reader detected (shown on the job page and in reports).
    detected_encoding = models.CharField(
        max_length=40, blank=True, verbose_name=_("detected encoding")
    )
    detected_delimiter = models.CharField(
        max_length=4, blank=True, verbose_name=_("detected delimiter")
    )
    # Optional rejections: {"reject_role": bool, "reject_disposable": bool}.
    options = models.JSONField(default=dict, blank=True, verbose_name=_("options"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created"))
    started_at = models.DateTimeField(null=True, blank=True, verbose_name=_("started"))
    finished_at = models.DateTimeField(null=True, blank=True, verbose_name=_("finished"))

    class Meta:
        verbose_name = _("import")
        verbose_name_plural = _("imports")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Import #{self.pk} {self.original_name}"


from contacts.segment_models import *  # noqa: E402,F401,F403
from contacts.signup_models import *  # noqa: E402,F401,F403
