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
        verbose_name=_("SMTP server"),
    )
    target = models.CharField(
        max_length=300, help_text=_("host:port (security)"), verbose_name=_("target")
    )
    checked_at = models.DateTimeField(db_index=True, verbose_name=_("checked"))
    health = models.CharField(max_length=10, choices=Health.choices, verbose_name=_("health"))
    up = models.BooleanField(verbose_name=_("up"))
    error = models.TextField(blank=True, verbose_name=_("error"))
    connect_ms = models.FloatField(null=True, blank=True, verbose_name=_("connect (ms)"))
    greeting_ms = models.FloatField(null=True, blank=True, verbose_name=_("greeting (ms)"))
    total_ms = models.FloatField(null=True, blank=True, verbose_name=_("total (ms)"))
    tls_version = models.CharField(max_length=20, blank=True, verbose_name=_("TLS version"))
    tls_cipher = models.CharField(max_length=100, blank=True, verbose_name=_("TLS cipher"))
    cert_days_left = models.FloatField(
        null=True, blank=True, verbose_name=_("certificate days left")
    )
    auth_ok = models.BooleanField(null=True, blank=True, verbose_name=_("AUTH succeeded"))
    findings = models.JSONField(default=list, blank=True, verbose_name=_("findings"))
    result = models.JSONField(
        default=dict, blank=True, help_text=_("Everything the check saw."), verbose_name=_("result")
    )

    class Meta:
        verbose_name_plural = _("SMTP checks")
        verbose_name = _("SMTP check")
        ordering = ["-checked_at"]
        indexes = [models.Index(fields=["target", "checked_at"], name="smtpcheck_target_time")]

    def __str__(self) -> str:
        return f"{self.target} {self.health} at {self.checked_at:%Y-%m-%d %H:%M:%S}"


class SmtpAlert(models.Model):
    """An alert sent (email, webhook) when a finding appeared; one per finding episode."""

    target = models.CharField(max_length=300, verbose_name=_("target"))
    code = models.CharField(max_length=40, verbose_name=_("code"))
    message = models.TextField(verbose_name=_("message"))
    created_at = models.DateTimeField(verbose_name=_("created"))
    resolved_at = models.DateTimeField(null=True, blank=True, verbose_name=_("resolved"))
    delivered = models.JSONField(
        default=dict,
        blank=True,
        help_text=_("email / webhook results"),
        verbose_name=_("delivered to"),
    )

    class Meta:
        verbose_name_plural = _("SMTP alerts")
        verbose_name = _("SMTP alert")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.target}: {self.code}"
