"""SMTP monitor: run and record checks, raise and resolve alerts, tell a server's health."""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import urllib.request
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.utils import timezone

from delivery.models import SmtpServer
from delivery.monitor.checks import CheckResult, CheckTarget, Finding, check_smtp, findings_for
from delivery.monitor.models import Health, SmtpAlert, SmtpCheck
from delivery.selectors import smtp_config_for_url

logger = logging.getLogger(__name__)

# Findings worth waking someone for; the others are shown on the status page only.
ALERT_CODES = frozenset(
    {"down", "no_tls", "cert_expiring", "cert_expired", "latency", "auth_failed", "tls_failed"}
)
CHECK_TIMEOUT = 15.0


def target_label(target: CheckTarget) -> str:
    return f"{target.host}:{target.port} ({target.security})"


def target_for_server(server: SmtpServer) -> CheckTarget:
    return CheckTarget(
        host=server.host,
        port=server.port,
        security=server.security,
        username=server.username,
        password=server.get_password() if server.username else "",
        timeout=CHECK_TIMEOUT,
        ca_file=settings.EDM_SMTP_TLS_CA_FILE,
    )


def target_for_url(url: str) -> CheckTarget:
    # Read as the sender reads it: same CA file, same (explicit) verification opt-out.
    config = smtp_config_for_url(url)
    return CheckTarget(
        host=config.host,
        port=config.port,
        security=config.security.value,
        username=config.username,
        password=config.password,
        timeout=CHECK_TIMEOUT,
        ca_file=config.ca_file,
        verify_tls=config.verify_tls,
    )


def monitor_targets() -> list[tuple[SmtpServer | None, CheckTarget]]:
    """Every enabled SmtpServer, and EDM_SMTP_URL unless a server already is that address."""
    targets: list[tuple[SmtpServer | None, CheckTarget]] = [
        (server, target_for_server(server)) for server in SmtpServer.objects.filter(enabled=True)
    ]
    default = target_for_url(settings.EDM_SMTP_URL)
    if not any((t.host, t.port) == (default.host, default.port) for _, t in targets):
        targets.append((None, default))
    return targets


def _median_greeting_ms(label: str, now: datetime) -> float | None:
    values = list(
        SmtpCheck.objects.filter(
            target=label, up=True, checked_at__gte=now - timedelta(hours=24)
        ).values_list("greeting_ms", flat=True)
    )
    values = [v for v in values if v is not None]
    return statistics.median(values) if len(values) >= 3 else None


def health_for(findings: list[Finding]) -> str:
    if any(f.severity == "down" for f in findings):
        return Health.DOWN
    if any(f.severity == "warning" for f in findings):
        return Health.DEGRADED
    return Health.OK


def smtp_check_record(
    *, server: SmtpServer | None, target: CheckTarget, result: CheckResult, now: datetime
) -> SmtpCheck:
    """Store a check, then raise alerts for new findings and resolve the ones that went."""
    label = target_label(target)
    previous = SmtpCheck.objects.filter(target=label, up=True).order_by("-checked_at").first()
    findings = findings_for(
        result,
        warn_days=settings.EDM_CERT_WARN_DAYS,
        credentials=bool(target.username),
        median_ms=_median_greeting_ms(label, now),
        had_tls=bool(previous and previous.tls_version),
    )
    check = SmtpCheck.objects.create(
        server=server,
        target=label,
        checked_at=now,
        health=health_for(findings),
        up=result.up,
        error=result.error,
        connect_ms=result.connect_ms,
        greeting_ms=result.greeting_ms,
        total_ms=result.total_ms,
        tls_version=result.tls_version,
        tls_cipher=result.tls_cipher,
        cert_days_left=result.cert_days_left,
        auth_ok=result.auth_ok,
        findings=[f.__dict__ for f in findings],
        result=result.as_dict(),
    )
    _update_alerts(label, findings, now)
    return check


def smtp_check_run(*, server: SmtpServer | None = None, url: str = "") -> SmtpCheck:
    """Check one server (or EDM_SMTP_URL / ``url``) now and record it."""
    target = target_for_server(server) if server else target_for_url(url or settings.EDM_SMTP_URL)
    result = asyncio.run(check_smtp(target))
    return smtp_check_record(server=server, target=target, result=result, now=timezone.now())


def _update_alerts(label: str, findings: list[Finding], now: datetime) -> None:
    current = {f.code: f for f in findings if f.code in ALERT_CODES and f.severity != "info"}
    open_alerts = {a.code: a for a in SmtpAlert.objects.filter(target=label, resolved_at=None)}
    for code, alert in open_alerts.items():
        if code not in current:
            alert.resolved_at = now
            alert.save(update_fields=["resolved_at"])
            logger.info("SMTP monitor: %s recovered from %s", label, code)
    for code, finding in current.items():
        if code in open_alerts:
            continue  # one alert per episode, not one per check
        alert = SmtpAlert.objects.create(
            target=label, code=code, message=finding.message, created_at=now
        )
        alert.delivered = alert_notify(alert)
        alert.save(update_fields=["delivered"])


def alert_notify(alert: SmtpAlert) -> dict[str, str]:
    """Email EDM_ALERT_EMAILS and POST JSON to EDM_ALERT_WEBHOOK; what each said."""
    delivered: dict[str, str] = {}
    subject = f"[Skylark] SMTP {alert.code}: {alert.target}"
    if settings.EDM_ALERT_EMAILS:
        try:
            send_mail(
                subject,
                f"{alert.message}\n\nAt {alert.created_at.isoformat()}.",
                settings.EDM_DEFAULT_FROM_EMAIL,
                settings.EDM_ALERT_EMAILS,
            )
            delivered["email"] = "sent"
        except Exception as exc:  # noqa: BLE001 - an alert channel failing must not stop checks
            logger.warning("SMTP monitor: alert email failed: %s", exc)
            delivered["email"] = f"failed: {exc}"[:200]
    if settings.EDM_ALERT_WEBHOOK:
        body = json.dumps(
            {
                "event": "smtp_alert",
                "target": alert.target,
                "code": alert.code,
                "message": alert.message,
                "at": alert.created_at.isoformat(),
            }
        ).encode()
        request = urllib.request.Request(
            settings.EDM_ALERT_WEBHOOK,
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
                delivered["webhook"] = str(response.status)
        except Exception as exc:  # noqa: BLE001
            logger.warning("SMTP monitor: alert webhook failed: %s", exc)
            delivered["webhook"] = f"failed: {exc}"[:200]
    return delivered


def server_health(server: SmtpServer | None, *, max_age_seconds: float | None = None) -> str:
    """ok | degraded | down from the latest recent check of a server (None: EDM_SMTP_URL).

    For the delivery engine (e.g. to rest a server that is down). Without a recent check
    there is no evidence against the server: "ok".
    """
    max_age = max_age_seconds or 3 * settings.EDM_MONITOR_SECONDS
    checks = SmtpCheck.objects.filter(checked_at__gte=timezone.now() - timedelta(seconds=max_age))
    if server is not None:
        checks = checks.filter(server=server)
    else:
        checks = checks.filter(target=target_label(target_for_url(settings.EDM_SMTP_URL)))
    latest = checks.order_by("-checked_at").values_list("health", flat=True).first()
    return latest or Health.OK
