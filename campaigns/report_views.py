"""Admin pages of a campaign's report and its CSV export (wired in campaigns.admin)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.utils.translation import gettext as _

from campaigns import reports
from campaigns.models import Campaign


def campaign_report_view(request: HttpRequest, object_id: int, *, model_admin) -> HttpResponse:
    campaign = get_object_or_404(Campaign, pk=object_id)
    funnel = reports.campaign_funnel(campaign=campaign)
    minutes = reports.campaign_minutes(campaign_id=campaign.pk)
    charts = reports.campaign_charts(minutes=minutes)
    deliveries_url = (
        reverse("admin:delivery_delivery_changelist") + f"?campaign__id__exact={campaign.pk}"
    )
    context = {
        **model_admin.admin_site.each_context(request),
        "title": _("Report: %(name)s") % {"name": campaign},
        "campaign": campaign,
        "funnel": funnel,
        "charts": {k: mark_safe(v) for k, v in charts.items()},  # built from numbers only
        "has_minutes": bool(minutes),
        "domains": reports.campaign_domains(campaign_id=campaign.pk),
        "links": reports.campaign_top_links(campaign_id=campaign.pk),
        "engaged": reports.campaign_recent_engaged(campaign_id=campaign.pk),
        "deliveries_url": deliveries_url,
        "csv_url": reverse("admin:campaigns_campaign_report_csv", args=[campaign.pk]),
        "back_url": reverse("admin:campaigns_campaign_change", args=[campaign.pk]),
        "opts": model_admin.model._meta,
    }
    return TemplateResponse(request, "admin/campaigns/report.html", context)


def campaign_report_csv_view(request: HttpRequest, object_id: int, *, model_admin) -> HttpResponse:
    campaign = get_object_or_404(Campaign, pk=object_id)
    response = StreamingHttpResponse(
        reports.campaign_outcomes_csv(campaign_id=campaign.pk), content_type="text/csv"
    )
    response["Content-Disposition"] = f'attachment; filename="campaign-{campaign.pk}-outcomes.csv"'
    return response
