"""Admin for templates and campaigns: thin, every action calls one service."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from unfold.admin import ModelAdmin, TabularInline
from unfold.decorators import action, display

from campaigns.content.previews import preview_panes, preview_strings
from campaigns.content.widgets import HtmlEditorWidget
from campaigns.errors import CampaignError
from campaigns.models import Campaign, CampaignAttachment, CampaignStatus, Template
from campaigns.preflight import Level, PreflightReport, campaign_preflight
from campaigns.preview import campaign_preview, find_contact, template_preview
from campaigns.selectors import campaign_report
from campaigns.services import (
    campaign_cancel,
    campaign_pause,
    campaign_resume,
    campaign_schedule,
    campaign_send,
    campaign_send_test,
)
from delivery.models import DeliveryStatus
from delivery.selectors import delivery_counts
from mailkit.errors import DeliveryError, TemplateError
from mailkit.render import TemplateSource, compile_templates


class TemplateCheckMixin:
    """Compile the Jinja2 fields on save and point at the failing line."""

    def clean(self):
        cleaned = super().clean()
        subject, html, text = (cleaned.get(f, "") or "" for f in ("subject", "html", "text"))
        if subject or html or text:
            try:
                compile_templates(TemplateSource(subject=subject, html=html, text=text))
            except TemplateError as exc:
                field = exc.field if exc.field in ("subject", "html", "text") else None
                raise ValidationError({field: str(exc)} if field else str(exc)) from exc
        return cleaned


class TemplateForm(TemplateCheckMixin, forms.ModelForm):
    class Meta:
        model = Template
        fields = ("name", "subject", "html", "text")
        widgets = {"html": HtmlEditorWidget}


# The campaign form's fields, by the change page's fieldsets.
_CAMPAIGN_MAIN = (
    "name",
    "lists",
    "segments",
    "template",
    "smtp_servers",
    "scheduled_at",
    "track_opens",
)
_CAMPAIGN_SENDER = ("from_email", "from_name", "reply_to")
_CAMPAIGN_CONTENT = ("subject", "html", "text")


class CampaignForm(TemplateCheckMixin, forms.ModelForm):
    class Meta:
        model = Campaign
        fields = (*_CAMPAIGN_MAIN, *_CAMPAIGN_SENDER, *_CAMPAIGN_CONTENT)
        widgets = {"html": HtmlEditorWidget}


@admin.register(Template)
class TemplateAdmin(ModelAdmin):
    form = TemplateForm
    list_display = ("name", "subject", "updated_at")
    search_fields = ("name", "subject")
    actions_detail = ("open_design", "open_preview")
    actions_list = ("open_starters",)

    @action(description=gettext_lazy("Preview"), url_path="preview-redirect", icon="visibility")
    def open_preview(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return redirect(reverse("admin:campaigns_template_preview", args=[object_id]))

    # --- the block editor (campaigns.content) ---
    @action(
        description=gettext_lazy("Block editor"),
        url_path="design-redirect",
        icon="dashboard_customize",
    )
    def open_design(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return redirect(reverse("content_design_edit", args=[object_id]))

    @action(
        description=gettext_lazy("New from a starter"),
        url_path="starters-redirect",
        icon="auto_awesome",
    )
    def open_starters(self, request: HttpRequest) -> HttpResponse:
        return redirect(reverse("content_starters"))

    def get_urls(self):
        return [
            path(
                "<int:object_id>/preview/",
                self.admin_site.admin_view(self.preview_view),
                name="campaigns_template_preview",
            ),
            *super().get_urls(),
        ]

    def preview_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        template = get_object_or_404(Template, pk=object_id)
        return _preview_page(self, request, template, template_preview, "template")


def _preview_page(model_admin, request: HttpRequest, obj, render, model_name: str):
    """The preview page of a template or a campaign, for a chosen or a random contact."""
    contact, query = _chosen_contact(request)
    preview, error = None, ""
    try:
        preview = render(obj, contact=contact)
    except DeliveryError as exc:
        error = str(exc)
    panes = None
    if preview is not None:
        source = preview.raw.decode("utf-8", "replace")
        panes = preview_panes(html=preview.html, text=preview.text, source=source)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": _("Preview of %(name)s") % {"name": obj},
        "subject_object": obj,
        "panes": panes,
        "preview_strings": preview_strings(),
        "back_url": reverse(f"admin:campaigns_{model_name}_change", args=[obj.pk]),
        "preview": preview,
        "error": error,
        "query": query,
        "opts": model_admin.model._meta,
    }
    return TemplateResponse(request, "admin/campaigns/preview.html", context)


def _chosen_contact(request: HttpRequest):
    """The contact named in ?contact= (id or email), or None for a random one."""
    query = request.GET.get("contact", "").strip()
    if not query:
        return None, ""
    contact = find_contact(query)
    if contact is None:
        messages.warning(
            request,
            _("No contact %(query)s: showing a random one instead.") % {"query": repr(query)},
        )
    return contact, query


_SESSION_KEY = "skylark_preflight_{}"


def _remember(request: HttpRequest, campaign_id: int, report: PreflightReport) -> None:
    request.session[_SESSION_KEY.format(campaign_id)] = {
        "findings": [[f.level.value, f.code, f.message] for f in report.findings],
        "recipients": report.recipients,
        "sampled": report.sampled,
    }


class CampaignAttachmentInline(TabularInline):
    model = CampaignAttachment
    extra = 0
    fields = ("file", "filename", "content_type", "content_id")


@admin.register(Campaign)
class CampaignAdmin(ModelAdmin):
    inlines = (CampaignAttachmentInline,)
    form = CampaignForm
    list_display = ("name", "status_badge", "total_recipients", "progress", "created_at")
    list_filter = ("status",)
    search_fields = ("name", "subject")
    filter_horizontal = ("lists", "segments", "smtp_servers")
    readonly_fields = (
        "status",
        "status_reason",
        "total_recipients",
        "progress",
        "live_progress",
        "started_at",
        "finished_at",
        "deliveries_link",
    )
    fieldsets = (
        (None, {"fields": _CAMPAIGN_MAIN}),
        (gettext_lazy("Sender"), {"fields": _CAMPAIGN_SENDER}),
        (gettext_lazy("Content"), {"fields": _CAMPAIGN_CONTENT}),
        (
            gettext_lazy("Status"),
            {
                "fields": (
                    "status",
                    "status_reason",
                    "total_recipients",
                    "live_progress",
                    "deliveries_link",
                    "started_at",
                    "finished_at",
                )
            },
        ),
    )
    # Action methods are named open_* so their URL names do not collide with the pages' own.
    actions_detail = (
        "send_now",
        "schedule",
        "pause",
        "resume",
        "cancel",
        "preflight",
        "open_preview",
        "open_send_test",
        "open_report",
    )
    change_form_before_template = "admin/campaigns/preflight_box.html"

    @display(description=gettext_lazy("Status"), label=True)
    def status_badge(self, obj: Campaign) -> str:
        return obj.get_status_display()

    @display(description=gettext_lazy("Progress"))
    def progress(self, obj: Campaign) -> str:
        if obj.pk is None:
            return "-"
        counts = delivery_counts(campaign_id=obj.pk)
        labels = dict(DeliveryStatus.choices)
        shown = [f"{labels.get(status, status)} {n}" for status, n in counts.items() if n]
        return ", ".join(shown) or _("no deliveries yet")

    @display(description=gettext_lazy("Live progress"))
    def live_progress(self, obj: Campaign) -> str:
        if obj.pk is None:
            return "-"
        url = reverse("admin:campaigns_campaign_progress", args=[obj.pk])
        return format_html(PROGRESS_WIDGET, url=url, words=json.dumps(_progress_words()))

    @display(description=gettext_lazy("Deliveries"))
    def deliveries_link(self, obj: Campaign) -> str:
        if obj.pk is None:
            return "-"
        url = reverse("admin:delivery_delivery_changelist") + f"?campaign__id__exact={obj.pk}"
        return format_html('<a href="{}">{}</a>', url, _("Every recipient and its SMTP replies"))

    @action(description=gettext_lazy("Send now"), url_path="send-now", icon="send")
    def send_now(self, request: HttpRequest, object_id: str) -> HttpResponse:
        campaign = get_object_or_404(Campaign, pk=object_id)
        # The pre-flight runs first so the marketer sees every finding, not only the first error.
        report = campaign_preflight(campaign)
        _remember(request, campaign.pk, report)
        if not report.ok:
            messages.error(request, _("Not sent: the pre-flight check found errors (see below)."))
        else:
            try:
                campaign_send(campaign_id=campaign.pk)
            except CampaignError as exc:
                messages.error(request, _("Not sent: %(error)s") % {"error": exc})
            else:
                messages.success(request, _("Sending started: the workers are on it."))
                if report.warnings:
                    messages.warning(
                        request,
                        ngettext(
                            "Sent with %(count)d pre-flight warning (below).",
                            "Sent with %(count)d pre-flight warnings (below).",
                            len(report.warnings),
                        )
                        % {"count": len(report.warnings)},
                    )
        return redirect(reverse("admin:campaigns_campaign_change", args=[object_id]))

    def _lifecycle(self, request: HttpRequest, object_id: str, service, done: str):
        try:
            service(campaign_id=int(object_id))
        except CampaignError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, done)
        return redirect(reverse("admin:campaigns_campaign_change", args=[object_id]))

    @action(description=gettext_lazy("Schedule"), url_path="schedule", icon="schedule")
    def schedule(self, request: HttpRequest, object_id: str) -> HttpResponse:
        campaign = get_object_or_404(Campaign, pk=object_id)
        if campaign.scheduled_at is None:
            messages.error(request, _("Set 'Scheduled for' below and save, then press Schedule."))
            return redirect(reverse("admin:campaigns_campaign_change", args=[object_id]))
        at = campaign.scheduled_at
        return self._lifecycle(
            request,
            object_id,
            lambda campaign_id: campaign_schedule(campaign_id=campaign_id, at=at),
            _("Scheduled for %(time)s.") % {"time": f"{timezone.localtime(at):%Y-%m-%d %H:%M %Z}"},
        )

    @action(description=gettext_lazy("Pause"), url_path="pause", icon="pause")
    def pause(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._lifecycle(
            request,
            object_id,
            campaign_pause,
            _("Paused: messages in flight finish, no new ones."),
        )

    @action(description=gettext_lazy("Resume"), url_path="resume", icon="play_arrow")
    def resume(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._lifecycle(
            request, object_id, campaign_resume, _("Resumed from what was actually sent.")
        )

    @action(description=gettext_lazy("Cancel"), url_path="cancel", icon="cancel")
    def cancel(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._lifecycle(
            request,
            object_id,
            campaign_cancel,
            _("Cancelled: unsent recipients were cancelled."),
        )

    def progress_json(self, request: HttpRequest, object_id: int) -> JsonResponse:
        get_object_or_404(Campaign, pk=object_id)
        return JsonResponse(campaign_report(campaign_id=object_id))

    @action(description=gettext_lazy("Pre-flight check"), url_path="preflight", icon="checklist")
    def preflight(self, request: HttpRequest, object_id: str) -> HttpResponse:
        campaign = get_object_or_404(Campaign, pk=object_id)
        report = campaign_preflight(campaign)
        _remember(request, campaign.pk, report)
        if report.ok:
            messages.success(
                request,
                ngettext(
                    "Pre-flight check passed (%(count)d warning): see the results below.",
                    "Pre-flight check passed (%(count)d warnings): see the results below.",
                    len(report.warnings),
                )
                % {"count": len(report.warnings)},
            )
        else:
            messages.error(
                request,
                ngettext(
                    "Pre-flight check: %(count)d error stops a send.",
                    "Pre-flight check: %(count)d errors stop a send.",
                    len(report.errors),
                )
                % {"count": len(report.errors)},
            )
        return redirect(reverse("admin:campaigns_campaign_change", args=[object_id]))

    @action(description=gettext_lazy("Preview"), url_path="preview-redirect", icon="visibility")
    def open_preview(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return redirect(reverse("admin:campaigns_campaign_preview", args=[object_id]))

    @action(description=gettext_lazy("Send test"), url_path="send-test-redirect", icon="science")
    def open_send_test(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return redirect(reverse("admin:campaigns_campaign_send_test", args=[object_id]))

    # --- report (campaigns.report_views) ---
    @action(description=gettext_lazy("Report"), url_path="report-redirect", icon="monitoring")
    def open_report(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return redirect(reverse("admin:campaigns_campaign_report", args=[object_id]))

    def _report_urls(self):
        from campaigns.report_views import campaign_report_csv_view, campaign_report_view

        def wrap(view):
            return self.admin_site.admin_view(
                lambda request, object_id: view(request, object_id, model_admin=self)
            )

        return [
            path(
                "<int:object_id>/report/",
                wrap(campaign_report_view),
                name="campaigns_campaign_report",
            ),
            path(
                "<int:object_id>/report.csv",
                wrap(campaign_report_csv_view),
                name="campaigns_campaign_report_csv",
            ),
        ]

    def get_urls(self):
        return [
            *self._report_urls(),
            path(
                "<int:object_id>/send-test/",
                self.admin_site.admin_view(self.send_test_view),
                name="campaigns_campaign_send_test",
            ),
            path(
                "<int:object_id>/progress.json",
                self.admin_site.admin_view(self.progress_json),
                name="campaigns_campaign_progress",
            ),
            path(
                "<int:object_id>/preview/",
                self.admin_site.admin_view(self.preview_view),
                name="campaigns_campaign_preview",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        remembered = request.session.get(_SESSION_KEY.format(object_id))
        extra_context = {**(extra_context or {}), "preflight": _shown(remembered)}
        return super().change_view(request, object_id, form_url, extra_context)

    def preview_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        campaign = get_object_or_404(Campaign, pk=object_id)
        return _preview_page(self, request, campaign, campaign_preview, "campaign")

    def send_test_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        campaign = get_object_or_404(Campaign, pk=object_id)
        results = None
        report = campaign_preflight(campaign, sample_size=20)
        if request.method == "POST":
            emails = [e.strip() for e in request.POST.get("emails", "").split(",") if e.strip()]
            contact_query = request.POST.get("contact", "").strip()
            contact = find_contact(contact_query) if contact_query else None
            try:
                for email in emails:
                    validate_email(email)
                if not emails or len(emails) > 10:
                    raise ValidationError(_("Give one to ten addresses, separated by commas."))
                if contact_query and contact is None:
                    raise ValidationError(
                        _("No contact %(query)s.") % {"query": repr(contact_query)}
                    )
                results = campaign_send_test(
                    campaign_id=campaign.pk,
                    emails=emails,
                    contact_id=contact.contact_id if contact else None,
                )
            except (ValidationError, CampaignError, DeliveryError) as exc:
                messages.error(
                    request,
                    _("Test not sent: %(errors)s")
                    % {"errors": "; ".join(getattr(exc, "messages", [str(exc)]))},
                )
            else:
                sent = sum(1 for r in results if r.status == "sent")
                level = messages.SUCCESS if sent == len(results) else messages.WARNING
                messages.add_message(
                    request,
                    level,
                    ngettext(
                        "%(sent)d of %(count)d test sent.",
                        "%(sent)d of %(count)d tests sent.",
                        len(results),
                    )
                    % {"sent": sent, "count": len(results)},
                )
        context = {
            **self.admin_site.each_context(request),
            "title": _("Send a test of %(name)s") % {"name": campaign},
            "campaign": campaign,
            "results": results,
            "preflight": _shown(_report_dict(report)),
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/campaigns/send_test.html", context)

    def has_change_permission(self, request: HttpRequest, obj: Campaign | None = None) -> bool:
        editable = obj is None or obj.status in (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED)
        return editable and super().has_change_permission(request, obj)


PROGRESS_WIDGET = """
<div data-progress-url="{url}" data-words="{words}" class="skylark-progress" style="min-width: 320px">
  <div style="height: 8px; background: #e5e7eb; border-radius: 4px; overflow: hidden">
    <div class="bar" style="height: 8px; width: 0; background: #0b6bcb"></div>
  </div>
  <div class="line" style="margin-top: 6px">&hellip;</div>
</div>
<script>
(function () {{
  const box = document.currentScript.previousElementSibling;
  const words = JSON.parse(box.dataset.words);
  const fill = (text, values) =>
    text.replace(/%\\((\\w+)\\)s/g, (m, k) => values[k]).replace(/%%/g, "%");
  async function refresh() {{
    const r = await (await fetch(box.dataset.progressUrl, {{credentials: "same-origin"}})).json();
    const c = r.counts, total = r.recipients || 0;
    const pct = total ? Math.round(100 * r.done / total) : 0;
    box.querySelector(".bar").style.width = pct + "%";
    let line = fill(words.line, {{...c, status: words.statuses[r.status] || r.status,
                                  done: r.done, total: total, pct: pct}});
    if (r.rate_per_second) line += fill(words.rate, {{rate: r.rate_per_second}});
    if (r.eta_seconds !== null && r.eta_seconds !== undefined) line += fill(words.eta, {{eta: r.eta_seconds}});
    box.querySelector(".line").textContent = line;
    if (["sending", "scheduled"].includes(r.status)) setTimeout(refresh, 2000);
  }}
  refresh();
}})();
</script>
"""


def _progress_words() -> dict:
    """The progress line's sentences for its script, in the request's language."""
    return {
        "line": _(
            "%(status)s: %(done)s of %(total)s done (%(pct)s%%) - sent %(sent)s, "
            "deferred %(deferred)s, bounced %(bounced)s, failed %(failed)s, "
            "suppressed %(suppressed)s"
        ),
        "rate": _(" - %(rate)s/s"),
        "eta": _(", about %(eta)s s left"),
        "statuses": {value: str(label) for value, label in CampaignStatus.choices},
    }


def _report_dict(report: PreflightReport) -> dict:
    return {
        "findings": [[f.level.value, f.code, f.message] for f in report.findings],
        "recipients": report.recipients,
        "sampled": report.sampled,
    }


def _shown(remembered: dict | None) -> dict | None:
    """A remembered report, findings grouped for the template (errors first)."""
    if not remembered:
        return None
    order = {Level.ERROR: 0, Level.WARNING: 1, Level.INFO: 2}
    findings = sorted(remembered["findings"], key=lambda f: order[Level(f[0])])
    return {
        "findings": [{"level": f[0], "code": f[1], "message": f[2]} for f in findings],
        "errors": sum(1 for f in findings if f[0] == Level.ERROR),
        "warnings": sum(1 for f in findings if f[0] == Level.WARNING),
        "recipients": remembered["recipients"],
        "sampled": remembered["sampled"],
    }


import campaigns.tracking_admin  # noqa: E402,F401  (webhooks admin, owned by the tracking work)
