"""History of SMTP server health checks (delivery.monitor.checks) and the alerts they raised."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

__all__ = ["Health", "SmtpCheck", "SmtpAlert"]


class Health(models.TextChoices):
    OK = "ok", _("OK")
    DEGRADED = "degraded", _("Degraded")
    DOWN = "down", _("Down")


class SmtpCheck(models.Model):
    """One check of one SMTP server (or of EDM_SMTP_URL when ``server`` is empty)."""

    server = models.ForeignKey(
        "delivery.SmtpServer",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="checks",
    )
    target = models.CharField(max_length=300, help_text=_("host:port (security)"))
    checked_at = models.DateTimeField(db_index=True)
    health = models.CharField(max_length=10, choices=Health.choices)
    up = models.BooleanField()
    error = models.TextField(blank=True)
    connect_ms = models.FloatField(null=True, blank=True)
    greeting_ms = models.FloatField(null=True, blank=True)
    total_ms = models.FloatField(null=True, blank=True)
    tls_version = models.CharField(max_length=20, blank=True)
    tls_cipher = models.CharField(max_length=100, blank=True)
    cert_days_left = models.FloatField(null=True, blank=True)
    auth_ok = models.BooleanField(null=True, blank=True)
    findings = models.JSONField(default=list, blank=True)
    result = models.JSONField(default=dict, blank=True, help_text=_("Everything the check saw."))

    class Meta:
        verbose_name = _("SMTP check")
        ordering = ["-checked_at"]
        indexes = [models.Index(fields=["target", "checked_at"], name="smtpcheck_target_time")]

    def __str__(self) -> str:
        return f"{self.target} {self.health} at {self.checked_at:%Y-%m-%d %H:%M:%S}"


class SmtpAlert(models.Model):
    """An alert sent (email, webhook) when a finding appeared; one per finding episode."""

    target = models.CharField(max_length=300)
    code = models.CharField(max_length=40)
    message = models.TextField()
    created_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    delivered = models.JSONField(default=dict, blank=True, help_text=_("email / webhook results"))

    class Meta:
        verbose_name = _("SMTP alert")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.target}: {self.code}"
