"""Admin of the SMTP monitor: a status page (health, findings, 24 h latency chart), history."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import escape, format_html
from django.utils.translation import gettext_lazy as _
from unfold.admin import ModelAdmin

from config.admin_mixins import ReadOnlyAdminMixin
from delivery.monitor import services as monitor_services
from delivery.monitor.models import Health, SmtpAlert, SmtpCheck

_CHART_W, _CHART_H = 600, 120


def latency_svg(points: list[tuple[float, float | None]], *, hours: float = 24) -> str:
    """An inline SVG polyline of greeting latency (ms) over the last ``hours``; down = red tick.

    ``points`` are (seconds ago, ms or None when down).
    """
    label = _("greeting latency, last %(hours)s h") % {"hours": f"{hours:.0f}"}
    values = [ms for _, ms in points if ms is not None]
    top = max(values, default=1.0) * 1.1 or 1.0
    span = hours * 3600
    coords, downs = [], []
    for ago, ms in sorted(points, key=lambda p: -p[0]):
        x = round(_CHART_W * (1 - ago / span), 1)
        if ms is None:
            downs.append(f'<line x1="{x}" y1="0" x2="{x}" y2="{_CHART_H}" stroke="#dc2626"/>')
        else:
            coords.append(f"{x},{round(_CHART_H - ms / top * _CHART_H, 1)}")
    line = (
        f'<polyline fill="none" stroke="#2563eb" stroke-width="1.5" points="{" ".join(coords)}"/>'
        if coords
        else ""
    )
    return (
        f'<svg viewBox="0 0 {_CHART_W} {_CHART_H}" width="100%" height="{_CHART_H}" '
        f'role="img" aria-label="{escape(label)}">'
        f'<rect width="{_CHART_W}" height="{_CHART_H}" fill="none" stroke="#e5e7eb"/>'
        f"{''.join(downs)}{line}"
        f'<text x="4" y="12" font-size="10" fill="#6b7280">{top:.0f} ms</text></svg>'
    )


@admin.register(SmtpCheck)
class SmtpCheckAdmin(ReadOnlyAdminMixin, ModelAdmin):
    list_display = (
        "checked_at",
        "target",
        "health_badge",
        "greeting_ms",
        "tls_version",
        "cert_days_left",
        "auth_ok",
    )
    list_filter = ("health", "target")
    date_hierarchy = "checked_at"

    @admin.display(description=_("Health"))
    def health_badge(self, obj: SmtpCheck) -> str:
        colour = {"ok": "#16a34a", "degraded": "#d97706", "down": "#dc2626"}[obj.health]
        return format_html('<b style="color:{}">{}</b>', colour, obj.get_health_display())

    def get_urls(self):
        return [
            path(
                "status/",
                self.admin_site.admin_view(self.status_view),
                name="delivery_smtpcheck_status",
            ),
            path(
                "check-now/",
                self.admin_site.admin_view(self.check_now_view),
                name="delivery_smtpcheck_check_now",
            ),
            *super().get_urls(),
        ]

    def status_view(self, request: HttpRequest) -> TemplateResponse:
        now = timezone.now()
        since = now - timedelta(hours=24)
        rows = []
        for server, target in monitor_services.monitor_targets():
            label = monitor_services.target_label(target)
            checks = list(
                SmtpCheck.objects.filter(target=label, checked_at__gte=since)
                .order_by("checked_at")
                .values("checked_at", "greeting_ms", "up")
            )
            latest = SmtpCheck.objects.filter(target=label).order_by("-checked_at").first()
            health = monitor_services.server_health(server) if latest else "unknown"
            points = [
                ((now - c["checked_at"]).total_seconds(), c["greeting_ms"] if c["up"] else None)
                for c in checks
            ]
            rows.append(
                {
                    "name": server.name if server else "EDM_SMTP_URL",
                    "label": label,
                    "health": health,
                    "health_label": _health_label(health),
                    "latest": latest,
                    "chart": latency_svg(points),
                }
            )
        context = {
            **self.admin_site.each_context(request),
            "title": _("SMTP server status"),
            "rows": rows,
            "alerts": SmtpAlert.objects.filter(resolved_at=None)[:50],
        }
        return TemplateResponse(request, "admin/delivery/smtp_monitor.html", context)

    def check_now_view(self, request: HttpRequest) -> HttpResponseRedirect:
        if request.method == "POST":
            for server, _target in monitor_services.monitor_targets():
                check = monitor_services.smtp_check_run(server=server)
                messages.info(request, f"{check.target}: {check.get_health_display()}")
        return HttpResponseRedirect(reverse("admin:delivery_smtpcheck_status"))


def _health_label(health: str) -> str:
    """A server's health in words; "unknown" before its first check."""
    if health == "unknown":
        return str(_("not checked yet"))
    return str(Health(health).label) if health in Health.values else health


@admin.register(SmtpAlert)
class SmtpAlertAdmin(ModelAdmin):
    list_display = ("created_at", "target", "code", "message", "resolved_at")
    list_filter = ("code", "resolved_at")

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
