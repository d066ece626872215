"""Admin of the API: keys (secret shown once at creation, revoke action), messages read-only."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from unfold.admin import ModelAdmin, TabularInline

from api import selectors, services
from api.errors import InvalidSenderDomain
from api.models import ApiKey, MessageEvent, Scope, TransactionalMessage


class ApiKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=Scope.choices, widget=forms.CheckboxSelectMultiple, required=True
    )
    allowed_from_domains = forms.CharField(
        label="Allowed From domains",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One domain a line (or separated by commas or spaces), matched exactly: "
        "a subdomain is listed on its own. Empty: any domain.",
    )

    class Meta:
        model = ApiKey
        fields = ("application", "scopes", "rate_limit_per_minute", "allowed_from_domains")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["allowed_from_domains"] = "\n".join(self.instance.allowed_from_domains)

    def clean_allowed_from_domains(self) -> list[str]:
        text = self.cleaned_data.get("allowed_from_domains") or ""
        try:
            return services.sender_domains_normalize(text.replace(",", " ").split())
        except InvalidSenderDomain as exc:
            raise forms.ValidationError(str(exc)) from None


@admin.register(ApiKey)
class ApiKeyAdmin(ModelAdmin):
    form = ApiKeyForm
    list_display = (
        "application",
        "prefix",
        "scopes",
        "allowed_from_domains",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    list_filter = ("revoked_at",)
    search_fields = ("application", "prefix")
    readonly_fields = ("prefix", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        key, plaintext = services.api_key_create(
            application=obj.application,
            scopes=form.cleaned_data["scopes"],
            rate_limit_per_minute=obj.rate_limit_per_minute,
            allowed_from_domains=form.cleaned_data["allowed_from_domains"],
        )
        obj.pk = key.pk
        obj.prefix = key.prefix
        obj.secret_hash = key.secret_hash
        obj.created_at = key.created_at
        messages.warning(
            request,
            f"API key for {key.application}: {plaintext}  (copy it now: it is not stored and "
            "will not be shown again)",
        )

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            services.api_key_revoke(api_key=key)
        messages.success(request, f"Revoked {queryset.count()} key(s).")


class MessageEventInline(TabularInline):
    model = MessageEvent
    extra = 0
    can_delete = False
    fields = ("kind", "created_at", "smtp_code", "enhanced_status", "detail")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(TransactionalMessage)
class TransactionalMessageAdmin(ModelAdmin):
    list_display = (
        "public_id",
        "to_email",
        "subject",
        "status",
        "category",
        "source",
        "attempts",
        "created_at",
        "sent_at",
    )
    list_filter = ("status", "category", "source")
    search_fields = ("to_email", "public_id", "message_id", "idempotency_key")
    exclude = ("raw",)
    inlines = [MessageEventInline]

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        return [f.name for f in self.model._meta.fields if f.name != "raw"] + ["bounce_reports"]

    @admin.display(description="Bounce reports")
    def bounce_reports(self, obj: TransactionalMessage) -> str:
        reports = selectors.message_bounce_reports(obj)
        if not reports:
            return "-"
        return format_html_join(
            format_html("<br>"),
            '<a href="{}">#{} {} ({}, by {})</a>',
            (
                (
                    reverse("admin:delivery_bouncemessage_change", args=[r.pk]),
                    r.pk,
                    r.received_at.strftime("%Y-%m-%d %H:%M"),
                    r.kind,
                    r.matched_by,
                )
                for r in reports
            ),
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
