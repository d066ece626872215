"""Reads for campaign reports and the dashboard, from the pre-aggregated counters.

A report reads one CampaignStats row, the per-minute and per-domain buckets, the links and
the indexed per-status counts of deliveries: nothing that grows with the number of
recipients beyond that index scan, so a 1,000,000-recipient report stays well under a second.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from html import escape

from django.db.models import Count
from django.db.models.functions import TruncDate
from django.utils import timezone
from django.utils.translation import gettext as _

from campaigns.models import Campaign
from campaigns.tracking_models import (
    ENGAGEMENT_HIT_FIELDS,
    CampaignDomainStats,
    CampaignLink,
    CampaignMinute,
    CampaignStats,
    Engagement,
)
from delivery.models import Delivery, DeliveryEvent, EventKind
from delivery.selectors import delivery_counts

# Gmail's sender guidelines: user-reported spam under 0.1%, never 0.3%. Bounces: providers
# start throttling around 2% and most ESPs suspend senders at 5%.
COMPLAINT_WARN, COMPLAINT_DANGER = 0.001, 0.003
BOUNCE_WARN, BOUNCE_DANGER = 0.02, 0.05


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _level(rate: float | None, warn: float, danger: float) -> str:
    if rate is None:
        return "ok"
    return "danger" if rate >= danger else "warning" if rate >= warn else "ok"


@dataclass(frozen=True)
class FunnelStep:
    key: str
    label: str
    human: int
    machine: int | None = None  # None: not a tracked interaction
    rate: float | None = None
    rate_of: str = ""
    level: str = "ok"


@dataclass(frozen=True)
class Funnel:
    campaign_id: int
    name: str
    status: str
    steps: list[FunnelStep]
    counts: dict[str, int]
    bounce_rate: float | None
    complaint_rate: float | None
    health: str = "ok"
    by_key: dict[str, FunnelStep] = field(default_factory=dict)


def campaign_funnel(*, campaign: Campaign, stats: CampaignStats | None = None) -> Funnel:
    counts = delivery_counts(campaign_id=campaign.pk)
    if stats is None:
        stats = CampaignStats.objects.filter(pk=campaign.pk).first() or CampaignStats(
            campaign_id=campaign.pk
        )
    recipients = sum(counts.values())
    delivered = counts["sent"]
    sent = delivered + stats.async_bounces  # accepted by the receiving server (250)
    bounced = counts["bounced"]
    attempted = delivered + bounced + counts["failed"]
    bounce_rate = _rate(bounced, attempted)
    complaint_rate = _rate(stats.complaints, delivered)
    steps = [
        FunnelStep("recipients", _("Recipients"), recipients),
        FunnelStep(
            "sent",
            _("Sent"),
            sent,
            rate=_rate(sent, recipients),
            rate_of=_("of recipients"),
        ),
        FunnelStep(
            "delivered",
            _("Delivered"),
            delivered,
            rate=_rate(delivered, sent),
            rate_of=_("of sent (minus bounce reports after a 250)"),
        ),
        FunnelStep(
            "opened",
            _("Opened"),
            stats.unique_opens,
            stats.unique_machine_opens,
            _rate(stats.unique_opens, delivered),
            _("of delivered"),
        ),
        FunnelStep(
            "clicked",
            _("Clicked"),
            stats.unique_clicks,
            stats.unique_machine_clicks,
            _rate(stats.unique_clicks, delivered),
            _("of delivered"),
        ),
        FunnelStep(
            "bounced",
            _("Bounced"),
            bounced,
            rate=bounce_rate,
            rate_of=_("of attempted"),
            level=_level(bounce_rate, BOUNCE_WARN, BOUNCE_DANGER),
        ),
        FunnelStep(
            "complained",
            _("Complained"),
            stats.complaints,
            rate=complaint_rate,
            rate_of=_("of delivered"),
            level=_level(complaint_rate, COMPLAINT_WARN, COMPLAINT_DANGER),
        ),
        FunnelStep(
            "unsubscribed",
            _("Unsubscribed"),
            stats.unsubscribes,
            rate=_rate(stats.unsubscribes, delivered),
            rate_of=_("of delivered"),
        ),
    ]
    levels = [s.level for s in steps]
    health = "danger" if "danger" in levels else "warning" if "warning" in levels else "ok"
    return Funnel(
        campaign_id=campaign.pk,
        name=campaign.name,
        status=campaign.get_status_display(),
        steps=steps,
        counts=counts,
        bounce_rate=bounce_rate,
        complaint_rate=complaint_rate,
        health=health,
        by_key={s.key: s for s in steps},
    )


def campaign_minutes(*, campaign_id: int, limit: int = 24 * 60) -> list[CampaignMinute]:
    rows = CampaignMinute.objects.filter(campaign_id=campaign_id).order_by("-minute")[:limit]
    return list(reversed(rows))


def campaign_domains(*, campaign_id: int, limit: int = 15) -> list[dict]:
    rows = CampaignDomainStats.objects.filter(campaign_id=campaign_id).order_by("-sent", "domain")
    return [
        {
            "domain": r.domain,
            "sent": r.sent,
            "bounced": r.bounced,
            "complaints": r.complaints,
            "opened": r.unique_opens,
            "clicked": r.unique_clicks,
            "open_rate": _rate(r.unique_opens, r.sent),
            "bounce_rate": _rate(r.bounced, r.sent + r.bounced),
        }
        for r in rows[:limit]
    ]


def campaign_top_links(*, campaign_id: int, limit: int = 10) -> list[CampaignLink]:
    return list(
        CampaignLink.objects.filter(campaign_id=campaign_id).order_by("-clicks", "position")[:limit]
    )


def campaign_recent_engaged(*, campaign_id: int, limit: int = 15) -> list[dict]:
    """The latest recipients who opened or clicked, for links to their timelines."""
    return list(
        Engagement.objects.filter(campaign_id=campaign_id, first_opened_at__isnull=False)
        .order_by("-first_opened_at")
        .values(
            "delivery_id",
            "delivery__email",
            "opens",
            "machine_opens",
            "clicks",
            "machine_clicks",
            "first_opened_at",
        )[:limit]
    )


# --- CSV export -----------------------------------------------------------------------------

CSV_HEADER = [
    "delivery_id",
    "email",
    "status",
    "reason",
    "smtp_code",
    "sent_at",
    *ENGAGEMENT_HIT_FIELDS,
    "unsubscribed_at",
    "complained",
]


class _Echo:
    def write(self, value: str) -> str:
        return value


def campaign_outcomes_csv(*, campaign_id: int, chunk_size: int = 5000) -> Iterator[str]:
    """Per-recipient outcomes as CSV lines, streamed (server-side cursor on PostgreSQL)."""
    writer = csv.writer(_Echo())
    complained = set(
        DeliveryEvent.objects.filter(
            delivery__campaign_id=campaign_id, kind=EventKind.COMPLAINT
        ).values_list("delivery_id", flat=True)
    )
    yield writer.writerow(CSV_HEADER)
    rows = (
        Delivery.objects.filter(campaign_id=campaign_id)
        .order_by("id")
        .values_list(
            "id",
            "email",
            "status",
            "reason",
            "smtp_code",
            "sent_at",
            "engagement__opens",
            "engagement__machine_opens",
            "engagement__first_opened_at",
            "engagement__clicks",
            "engagement__machine_clicks",
            "engagement__first_clicked_at",
            "engagement__unsubscribed_at",
        )
        .iterator(chunk_size=chunk_size)
    )
    for row in rows:
        values = [
            v.isoformat() if hasattr(v, "isoformat") else ("" if v is None else v) for v in row
        ]
        # A cell starting with = + - @ would be a formula in a spreadsheet.
        if str(values[1])[:1] in "=+-@":
            values[1] = "'" + values[1]
        for i in (6, 7, 9, 10):
            values[i] = values[i] or 0
        yield writer.writerow([*values, "yes" if row[0] in complained else ""])


# --- charts (inline SVG: no script, prints well, works offline) ----------------------------------


def svg_chart(
    *,
    labels: list[str],
    series: list[tuple[str, list[int], str]],
    width: int = 640,
    height: int = 180,
) -> str:
    """A small line chart; `series` is (name, values, colour). Returns trusted SVG markup."""
    pad_left, pad_bottom, pad_top = 44, 22, 10
    plot_w, plot_h = width - pad_left - 10, height - pad_bottom - pad_top
    peak = max([max(values, default=0) for _, values, _ in series] + [1])
    n = max(len(labels), 1)

    def x(i: int) -> float:
        return pad_left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v: int) -> float:
        return pad_top + plot_h - plot_h * v / peak

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" style="max-width:{width}px;font:11px system-ui,sans-serif">'
    ]
    for frac in (0, 0.5, 1):
        value = round(peak * frac)
        parts.append(
            f'<line x1="{pad_left}" x2="{width - 10}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            'stroke="#e5e7eb"/>'
            f'<text x="{pad_left - 6}" y="{y(value) + 4:.1f}" text-anchor="end" '
            f'fill="#6b7280">{value}</text>'
        )
    step = max(1, n // 6)
    for i in range(0, len(labels), step):  # no labels (nothing sent yet): an empty axis
        parts.append(
            f'<text x="{x(i):.1f}" y="{height - 6}" text-anchor="middle" fill="#6b7280">'
            f"{escape(labels[i])}</text>"
        )
    for name, values, colour in series:
        if not values:
            continue
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}">'
            f"<title>{escape(name)}</title></polyline>"
        )
    parts.append("</svg>")
    return "".join(parts)


_CHART_FIELDS = ("sent", "bounced", "opens", "machine_opens", "clicks", "machine_clicks")


def _time_buckets(minutes: list[CampaignMinute], *, points: int = 180) -> list[CampaignMinute]:
    """Quiet minutes filled with zeros, then grouped so a chart has at most `points` points."""
    if not minutes:
        return []
    first, last = minutes[0].minute, minutes[-1].minute
    span = int((last - first).total_seconds() // 60) + 1
    size = max(1, -(-span // points))  # minutes per point, rounded up
    buckets = [
        CampaignMinute(minute=first + timedelta(minutes=i * size)) for i in range(-(-span // size))
    ]
    for row in minutes:
        bucket = buckets[int((row.minute - first).total_seconds() // 60) // size]
        for name in _CHART_FIELDS:
            setattr(bucket, name, getattr(bucket, name) + getattr(row, name))
    return buckets


def campaign_charts(*, minutes: list[CampaignMinute]) -> dict[str, str]:
    minutes = _time_buckets(minutes)
    labels = [timezone.localtime(m.minute).strftime("%H:%M") for m in minutes]
    return {
        "sends": svg_chart(
            labels=labels,
            series=[
                (_("Sent"), [m.sent for m in minutes], "#0b6bcb"),
                (_("Bounced"), [m.bounced for m in minutes], "#dc2626"),
            ],
        ),
        "engagement": svg_chart(
            labels=labels,
            series=[
                (_("Opens (human)"), [m.opens for m in minutes], "#16a34a"),
                (_("Opens (machine)"), [m.machine_opens for m in minutes], "#a3a3a3"),
                (_("Clicks (human)"), [m.clicks for m in minutes], "#9333ea"),
                (_("Clicks (machine)"), [m.machine_clicks for m in minutes], "#f59e0b"),
            ],
        ),
    }


# --- dashboard --------------------------------------------------------------------------------


def contacts_growth(*, days: int = 30) -> list[tuple[str, int]]:
    """Contacts created per day over the last `days` (zeros included)."""
    from contacts.models import Contact

    today = timezone.localdate()
    start = today - timedelta(days=days - 1)
    rows = dict(
        Contact.objects.filter(created_at__date__gte=start)
        .annotate(day=TruncDate("created_at"))
        .values_list("day")
        .annotate(n=Count("id"))
        .values_list("day", "n")
    )
    return [
        ((start + timedelta(days=i)).strftime("%m-%d"), rows.get(start + timedelta(days=i), 0))
        for i in range(days)
    ]


def dashboard_data(*, recent: int = 6) -> dict:
    campaigns = list(Campaign.objects.exclude(status="draft").order_by("-created_at")[:recent])
    stats = {s.pk: s for s in CampaignStats.objects.filter(pk__in=[c.pk for c in campaigns])}
    funnels = [campaign_funnel(campaign=c, stats=stats.get(c.pk)) for c in campaigns]
    growth = contacts_growth()
    return {
        "funnels": funnels,
        "growth_total": sum(n for _, n in growth),
        "growth_chart": svg_chart(
            labels=[d for d, _ in growth],
            series=[(_("New contacts"), [n for _, n in growth], "#0b6bcb")],
            height=150,
        ),
        "warnings": [f for f in funnels if f.health != "ok"],
        "limits": {
            "complaint_warn": COMPLAINT_WARN,
            "complaint_danger": COMPLAINT_DANGER,
            "bounce_warn": BOUNCE_WARN,
            "bounce_danger": BOUNCE_DANGER,
        },
    }


def dashboard_callback(request, context: dict) -> dict:
    """UNFOLD["DASHBOARD_CALLBACK"]: the admin index's figures."""
    from django.utils.safestring import mark_safe

    data = dashboard_data()
    data["growth_chart"] = mark_safe(data["growth_chart"])  # built from numbers only
    context.update(dashboard=data)
    return context
