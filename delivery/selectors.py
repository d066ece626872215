"""Reads of the delivery app: SMTP configuration, DKIM signers, delivery counts, bounce and
complaint rates."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, IntegerField, Q, Value
from django.db.models.functions import Lower, StrIndex, Substr
from django.utils import timezone
from django.utils.translation import gettext as _

from delivery.models import OPEN_STATUSES, Delivery, DeliveryStatus, DkimKey, EventKind, SmtpServer
from delivery.ratelimit import Limit, RateLimiter
from mailkit.dkim import DkimSigner
from mailkit.smtp import Security, SmtpConfig, smtp_config_from_url


def smtp_config_for(server: SmtpServer | None) -> SmtpConfig:
    """The pool configuration of a server, or of EDM_SMTP_URL when none is named."""
    common = {
        "timeout": settings.EDM_SMTP_TIMEOUT_SECONDS,
        "max_messages_per_connection": settings.EDM_SMTP_MAX_MESSAGES_PER_CONNECTION,
        "max_connection_age": float(settings.EDM_SMTP_MAX_CONNECTION_AGE_SECONDS),
    }
    if server is None:
        server = SmtpServer.objects.filter(is_default=True, enabled=True).first()
    if server is None:
        return smtp_config_for_url(
            settings.EDM_SMTP_URL, pool_size=settings.EDM_SMTP_POOL_SIZE, **common
        )
    return SmtpConfig(
        host=server.host,
        port=server.port,
        security=Security(server.security),
        username=server.username,
        password=server.get_password(),
        pool_size=server.pool_size,
        ca_file=settings.EDM_SMTP_TLS_CA_FILE,
        **common,
    )


def smtp_config_for_url(url: str, **overrides: Any) -> SmtpConfig:
    """An SMTP URL's configuration: its own ``ca_file`` and ``verify_tls``, else the defaults
    (EDM_SMTP_TLS_CA_FILE, verified). The sender and the monitor both read URLs here."""
    config = smtp_config_from_url(url, **overrides)
    if not config.ca_file and settings.EDM_SMTP_TLS_CA_FILE:
        config = dataclasses.replace(config, ca_file=settings.EDM_SMTP_TLS_CA_FILE)
    return config


@dataclass(frozen=True)
class Route:
    """One way out: an SMTP server's pool configuration, rate limits and weight."""

    key: str
    config: SmtpConfig
    limiter: RateLimiter | None
    weight: int = 1
    daily_quota: int = 0  # messages per UTC day, 0 = unlimited
    server_id: int | None = None  # None: EDM_SMTP_URL


def routes_for(servers: list[SmtpServer]) -> list[Route]:
    """The routes of the named servers; none named: the enabled default servers, or else
    EDM_SMTP_URL."""
    servers = [s for s in servers if s.enabled] or list(
        SmtpServer.objects.filter(enabled=True, is_default=True)
    )
    if not servers:
        return [
            Route(
                key="server:default", config=smtp_config_for(None), limiter=rate_limiter_for(None)
            )
        ]
    return [
        Route(
            key=f"server:{server.pk}",
            config=smtp_config_for(server),
            limiter=rate_limiter_for(server),
            weight=max(server.weight, 1),
            daily_quota=server.daily_quota,
            server_id=server.pk,
        )
        for server in servers
    ]


def choose_route(routes: list[Route]) -> Route:
    """A route by weight among the servers that are neither resting (they kept failing) nor
    down by the SMTP monitor's latest check; when none is left, any of them."""
    from delivery.health import is_rested
    from delivery.monitor.services import server_health

    def usable(route: Route) -> bool:
        if is_rested(route.key):
            return False
        if len(routes) > 1 and route.server_id is not None:
            server = SmtpServer(pk=route.server_id)
            return server_health(server) != "down"
        return True

    healthy = [route for route in routes if usable(route)] or routes
    return random.choices(healthy, weights=[route.weight for route in healthy])[0]


def dkim_signer_for(domain: str) -> DkimSigner | None:
    """The signer of the newest enabled key of a From domain, if it has one."""
    key = (
        DkimKey.objects.filter(domain=domain.lower(), enabled=True).order_by("-created_at").first()
    )
    if key is None:
        return None
    return DkimSigner(
        domain=key.domain, selector=key.selector, private_key_pem=key.get_private_key()
    )


def delivery_counts(*, campaign_id: int) -> dict[str, int]:
    """Deliveries of a campaign per status, every status present (zero when none)."""
    counts = dict.fromkeys(DeliveryStatus.values, 0)
    rows = (
        Delivery.objects.filter(campaign_id=campaign_id)
        .values_list("status")
        .annotate(n=Count("id"))
        .order_by()
    )
    counts.update({status: n for status, n in rows})
    return counts


def has_open_deliveries(*, campaign_id: int) -> bool:
    return Delivery.objects.filter(campaign_id=campaign_id, status__in=OPEN_STATUSES).exists()


def due_deliveries(now) -> Q:
    """Deliveries to send now: pending, or deferred and due."""
    return Q(status=DeliveryStatus.PENDING) | Q(
        status=DeliveryStatus.DEFERRED, next_attempt_at__lte=now
    )


def has_due_deliveries(*, campaign_id: int, now, id_from: int, id_to: int) -> bool:
    """Whether a campaign has due deliveries in an id range (both ends included)."""
    return Delivery.objects.filter(
        due_deliveries(now), campaign_id=campaign_id, id__gte=id_from, id__lte=id_to
    ).exists()


def campaigns_with_due_deliveries(*, now, campaign_ids) -> list[int]:
    """Those of `campaign_ids` with a pending or due deferred delivery: one indexed EXISTS
    per campaign, never a scan of every pending row."""
    return [
        campaign_id
        for campaign_id in campaign_ids
        if Delivery.objects.filter(due_deliveries(now), campaign_id=campaign_id).exists()
    ]


def rate_limiter_for(server: SmtpServer | None) -> RateLimiter | None:
    """The shared rate limits of sends through `server` (or EDM_SMTP_URL's), or None."""
    from delivery.models import DomainRateLimit

    if server is None:
        server = SmtpServer.objects.filter(is_default=True, enabled=True).first()
    if server is not None:
        per_second = server.rate_per_second
        server_key = f"server:{server.pk}"
    else:
        per_second = settings.EDM_SMTP_RATE
        server_key = "server:default"
    server_limit = Limit(key=server_key, per_second=per_second) if per_second > 0 else None
    domains: dict[str, Limit] = {}
    for row in DomainRateLimit.objects.filter(enabled=True, rate__gt=0):
        limit = Limit(key=f"domain:{row.pk}", per_second=row.per_second)
        for domain in row.domain_list():
            domains[domain] = limit
    if server_limit is None and not domains:
        return None
    return RateLimiter(redis_url=settings.REDIS_URL, server=server_limit, domains=domains)


# --- reads for the admin (rates) -------------------------------------------------------------

# Gmail's sender guidelines: keep the user-reported spam rate below 0.1%, never reach 0.3%.
COMPLAINT_RATE_WARN = 0.001
COMPLAINT_RATE_DANGER = 0.003


@dataclass(frozen=True)
class RateRow:
    label: str
    sent: int  # accepted by the receiving server (250) or refused by it
    bounced: int
    complained: int

    @property
    def bounce_rate(self) -> float:
        return self.bounced / self.sent if self.sent else 0.0

    @property
    def complaint_rate(self) -> float:
        return self.complained / self.sent if self.sent else 0.0

    @property
    def complaint_level(self) -> str:
        if self.complaint_rate >= COMPLAINT_RATE_DANGER:
            return "danger"
        if self.complaint_rate >= COMPLAINT_RATE_WARN:
            return "warning"
        return "ok"


def _attempted() -> Q:
    return Q(sent_at__isnull=False) | Q(
        status__in=[DeliveryStatus.SENT, DeliveryStatus.BOUNCED, DeliveryStatus.FAILED]
    )


def _rate_counts():
    return {
        # distinct everywhere: the join to events repeats a delivery once per event.
        "sent": Count("id", filter=_attempted(), distinct=True),
        "bounced": Count("id", filter=Q(status=DeliveryStatus.BOUNCED), distinct=True),
        "complained": Count("id", filter=Q(events__kind=EventKind.COMPLAINT), distinct=True),
    }


def bounce_rates_by_campaign(*, limit: int = 50) -> list[RateRow]:
    """Sent, bounced and complained per campaign, newest campaigns first."""
    rows = (
        Delivery.objects.values("campaign_id", "campaign__name")
        .annotate(**_rate_counts())
        .order_by("-campaign_id")[:limit]
    )
    return [
        RateRow(
            label=(
                f"#{r['campaign_id']} {r['campaign__name']}"
                if r["campaign_id"] is not None
                else str(_("Transactional messages"))
            ),
            sent=r["sent"],
            bounced=r["bounced"],
            complained=r["complained"],
        )
        for r in rows
    ]


def bounce_rates_by_domain(*, days: int = 30, limit: int = 50) -> list[RateRow]:
    """The same figures per recipient domain over the last `days`, busiest domains first."""
    since = timezone.now() - timedelta(days=days)
    domain = Lower(
        Substr("email", StrIndex("email", Value("@")) + Value(1, output_field=IntegerField()))
    )
    rows = (
        Delivery.objects.filter(updated_at__gte=since)
        .annotate(domain=domain)
        .values("domain")
        .annotate(**_rate_counts())
        .order_by("-sent", "domain")[:limit]
    )
    return [
        RateRow(label=r["domain"], sent=r["sent"], bounced=r["bounced"], complained=r["complained"])
        for r in rows
    ]
