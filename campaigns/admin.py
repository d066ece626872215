"""Admin for templates and campaigns: thin, every action calls one service."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from unfold.admin import ModelAdmin
from unfold.decorators import action, display

from campaigns.errors import CampaignError
from campaigns.models import Campaign, CampaignStatus, Template
from campaigns.services import campaign_send, campaign_send_test
from delivery.errors import TemplateError
from delivery.render import TemplateSource, compile_templates
from delivery.selectors import delivery_counts


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


class CampaignForm(TemplateCheckMixin, forms.ModelForm):
    class Meta:
        model = Campaign
        fields = (
            "name",
            "lists",
            "template",
            "smtp_server",
            "scheduled_at",
            "from_email",
            "from_name",
            "reply_to",
            "subject",
            "html",
            "text",
        )


@admin.register(Template)
class TemplateAdmin(ModelAdmin):
    form = TemplateForm
    list_display = ("name", "subject", "updated_at")
    search_fields = ("name", "subject")


@admin.register(Campaign)
class CampaignAdmin(ModelAdmin):
    form = CampaignForm
    list_display = ("name", "status_badge", "total_recipients", "progress", "created_at")
    list_filter = ("status",)
    search_fields = ("name", "subject")
    filter_horizontal = ("lists",)
    readonly_fields = (
        "status",
        "status_reason",
        "total_recipients",
        "progress",
        "started_at",
        "finished_at",
        "deliveries_link",
    )
    fieldsets = (
        (None, {"fields": ("name", "lists", "template", "smtp_server", "scheduled_at")}),
        ("Sender", {"fields": ("from_email", "from_name", "reply_to")}),
        ("Content", {"fields": ("subject", "html", "text")}),
        (
            "Status",
            {
                "fields": (
                    "status",
                    "status_reason",
                    "total_recipients",
                    "progress",
                    "deliveries_link",
                    "started_at",
                    "finished_at",
                )
            },
        ),
    )
    actions_detail = ("send_now", "send_test")

    @display(description="Status", label=True)
    def status_badge(self, obj: Campaign) -> str:
        return obj.get_status_display()

    @display(description="Progress")
    def progress(self, obj: Campaign) -> str:
        if obj.pk is None:
            return "-"
        counts = delivery_counts(campaign_id=obj.pk)
        shown = [f"{status} {n}" for status, n in counts.items() if n]
        return ", ".join(shown) or "no deliveries yet"

    @display(description="Deliveries")
    def deliveries_link(self, obj: Campaign) -> str:
        if obj.pk is None:
            return "-"
        url = reverse("admin:delivery_delivery_changelist") + f"?campaign__id__exact={obj.pk}"
        return format_html('<a href="{}">Every recipient and its SMTP replies</a>', url)

    @action(description="Send now", url_path="send-now", icon="send")
    def send_now(self, request: HttpRequest, object_id: str) -> HttpResponse:
        try:
            campaign_send(campaign_id=int(object_id))
        except CampaignError as exc:
            messages.error(request, f"Not sent: {exc}")
        else:
            messages.success(request, "Sending started: the workers are on it.")
        return redirect(reverse("admin:campaigns_campaign_change", args=[object_id]))

    @action(description="Send test", url_path="send-test-redirect", icon="science")
    def send_test(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return redirect(reverse("admin:campaigns_campaign_send_test", args=[object_id]))

    def get_urls(self):
        return [
            path(
                "<int:object_id>/send-test/",
                self.admin_site.admin_view(self.send_test_view),
                name="campaigns_campaign_send_test",
            ),
            *super().get_urls(),
        ]

    def send_test_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        campaign = get_object_or_404(Campaign, pk=object_id)
        results = None
        if request.method == "POST":
            emails = [e.strip() for e in request.POST.get("emails", "").split(",") if e.strip()]
            try:
                for email in emails:
                    validate_email(email)
                if not emails or len(emails) > 10:
                    raise ValidationError("Give one to ten addresses, separated by commas.")
                results = campaign_send_test(campaign_id=campaign.pk, emails=emails)
            except (ValidationError, CampaignError, TemplateError) as exc:
                messages.error(
                    request, f"Test not sent: {'; '.join(getattr(exc, 'messages', [str(exc)]))}"
                )
        context = {
            **self.admin_site.each_context(request),
            "title": f"Send a test of {campaign}",
            "campaign": campaign,
            "results": results,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/campaigns/send_test.html", context)

    def has_change_permission(self, request: HttpRequest, obj: Campaign | None = None) -> bool:
        editable = obj is None or obj.status in (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED)
        return editable and super().has_change_permission(request, obj)
