"""Admin of the API: keys (secret shown once at creation, revoke action), messages read-only."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from unfold.admin import ModelAdmin

from api import selectors, services
from api.errors import InvalidSenderDomain
from api.models import ApiKey, Scope, TransactionalMessage


class ApiKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=Scope.choices, widget=forms.CheckboxSelectMultiple, required=True
    )
    allowed_from_domains = forms.CharField(
        label=_("Allowed From domains"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text=_(
            "One domain a line (or separated by commas or spaces), matched exactly: "
            "a subdomain is listed on its own. Empty: any domain."
        ),
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
            _(
                "API key for %(application)s: %(key)s  (copy it now: it is not stored and "
                "will not be shown again)"
            )
            % {"application": key.application, "key": plaintext},
        )

    @admin.action(description=_("Revoke the selected keys"))
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            services.api_key_revoke(api_key=key)
        count = queryset.count()
        messages.success(
            request,
            ngettext("Revoked %(count)d key.", "Revoked %(count)d keys.", count) % {"count": count},
        )


@admin.register(TransactionalMessage)
class TransactionalMessageAdmin(ModelAdmin):
    """Read-only: the request, and its delivery's status, reply and history."""

    list_display = (
        "public_id",
        "recipient",
        "subject",
        "status",
        "category",
        "source",
        "attempts",
        "created_at",
        "sent_at",
    )
    list_filter = ("delivery__status", "category", "source")
    search_fields = ("delivery__email", "public_id", "delivery__message_id", "idempotency_key")
    list_select_related = ("delivery",)
    exclude = ("raw",)
    show_full_result_count = False

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        own = [f.name for f in self.model._meta.fields if f.name != "raw"]
        return [*own, "status", "smtp_reply", "history", "bounce_reports"]

    @admin.display(description=_("Recipient"), ordering="delivery__email")
    def recipient(self, obj: TransactionalMessage) -> str:
        return obj.delivery.email

    @admin.display(description=_("Status"), ordering="delivery__status")
    def status(self, obj: TransactionalMessage) -> str:
        return obj.delivery.get_status_display()

    @admin.display(description=_("Attempts"))
    def attempts(self, obj: TransactionalMessage) -> int:
        return obj.delivery.attempts

    @admin.display(description=_("Sent at"), ordering="delivery__sent_at")
    def sent_at(self, obj: TransactionalMessage):
        return obj.delivery.sent_at

    @admin.display(description=_("Server reply"))
    def smtp_reply(self, obj: TransactionalMessage) -> str:
        return obj.delivery.smtp_reply or "-"

    @admin.display(description=_("History"))
    def history(self, obj: TransactionalMessage) -> str:
        events = selectors.message_events(obj)
        if not events:
            return "-"
        return format_html_join(
            mark_safe("<br>"),  # noqa: S308 - a constant
            "{} {} {}",
            ((e["at"][:19].replace("T", " "), e["kind"], e["detail"][:200]) for e in events),
        )

    @admin.display(description=_("Bounce reports"))
    def bounce_reports(self, obj: TransactionalMessage) -> str:
        reports = selectors.message_bounce_reports(obj)
        if not reports:
            return "-"
        return format_html_join(
            mark_safe("<br>"),  # noqa: S308 - a constant
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
