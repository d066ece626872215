"""Admin for SMTP servers, DKIM keys, deliveries (read-only) and the dev mailbox."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from unfold.admin import ModelAdmin, TabularInline
from unfold.decorators import display

from config.admin_mixins import ReadOnlyAdminMixin
from delivery.models import Delivery, DeliveryEvent, DkimKey, DomainRateLimit, SmtpServer
from delivery.sink import list_messages


class SmtpServerForm(forms.ModelForm):
    password = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        label=gettext_lazy("Password"),
        help_text=gettext_lazy(
            "Stored encrypted, never shown again. Leave empty to keep the current one."
        ),
    )

    class Meta:
        model = SmtpServer
        fields = (
            "name",
            "host",
            "port",
            "security",
            "username",
            "pool_size",
            "rate_limit",
            "rate_period",
            "daily_quota",
            "weight",
            "enabled",
            "is_default",
        )

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("username") and cleaned.get("security") == "none":
            raise forms.ValidationError(
                _(
                    "A server with credentials needs STARTTLS or TLS: Skylark never sends a "
                    "password in the clear."
                )
            )
        return cleaned

    def save(self, commit: bool = True) -> SmtpServer:
        server = super().save(commit=False)
        if self.cleaned_data.get("password"):
            server.set_password(self.cleaned_data["password"])
        if commit:
            server.save()
        return server


@admin.register(SmtpServer)
class SmtpServerAdmin(ModelAdmin):
    form = SmtpServerForm
    list_display = (
        "name",
        "host",
        "port",
        "security",
        "pool_size",
        "rate",
        "enabled",
        "is_default",
    )
    list_filter = ("enabled", "security")

    @display(description=gettext_lazy("Rate limit"))
    def rate(self, obj: SmtpServer) -> str:
        if not obj.rate_limit:
            return _("unlimited")
        return _("%(rate)s per %(period)s") % {
            "rate": obj.rate_limit,
            "period": obj.get_rate_period_display(),
        }


@admin.register(DomainRateLimit)
class DomainRateLimitAdmin(ModelAdmin):
    """Per-provider limits shared by every worker; a 421 slows a provider down on its own."""

    list_display = ("name", "rate", "period", "domains", "enabled")
    list_editable = ("rate", "period", "enabled")
    search_fields = ("name", "domains")


@admin.register(DkimKey)
class DkimKeyAdmin(ModelAdmin):
    list_display = ("domain", "selector", "algorithm", "enabled", "created_at")
    readonly_fields = ("dns_record_name", "txt_record")
    fields = ("domain", "selector", "algorithm", "enabled", "dns_record_name", "txt_record")

    @display(description=gettext_lazy("DNS name"))
    def dns_record_name(self, obj: DkimKey) -> str:
        return obj.dns_name if obj.pk else "-"

    @display(description=gettext_lazy("TXT record to publish"))
    def txt_record(self, obj: DkimKey) -> str:
        if not obj.public_key:
            return _("Generated when you save.")
        from mailkit.dkim import dkim_txt_record

        return format_html(
            "<code style='word-break: break-all'>{}</code>",
            dkim_txt_record(algorithm=obj.algorithm, public_key_b64=obj.public_key),
        )

    def save_model(self, request: HttpRequest, obj: DkimKey, form, change: bool) -> None:
        if not obj.private_key_encrypted:
            from mailkit.dkim import generate_dkim_key

            private_pem, public_b64 = generate_dkim_key(algorithm=obj.algorithm)
            obj.set_private_key(private_pem)
            obj.public_key = public_b64
        obj.domain = obj.domain.lower()
        super().save_model(request, obj, form, change)


class DeliveryEventInline(TabularInline):
    model = DeliveryEvent
    extra = 0
    can_delete = False
    fields = ("created_at", "kind", "smtp_code", "enhanced_status", "detail")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdminMixin, ModelAdmin):
    list_display = (
        "id",
        "campaign",
        "email",
        "status_badge",
        "attempts",
        "smtp_code",
        "reply_short",
        "updated_at",
    )
    list_filter = ("status", "campaign", "reason")
    search_fields = ("email", "message_id")
    list_select_related = ("campaign",)
    inlines = (DeliveryEventInline,)
    show_full_result_count = False

    @display(
        description=gettext_lazy("Status"),
        label={
            "sent": "success",
            "bounced": "danger",
            "failed": "danger",
            "deferred": "warning",
            "suppressed": "info",
        },
    )
    def status_badge(self, obj: Delivery) -> str | tuple[str, str]:
        # (value, label): the colour follows the value, the person reads the label.
        if obj.status in ("sent", "bounced", "failed", "deferred", "suppressed"):
            return obj.status, obj.get_status_display()
        return obj.get_status_display()

    @display(description=gettext_lazy("Server reply"))
    def reply_short(self, obj: Delivery) -> str:
        return (obj.smtp_reply or "")[:80]

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


def mailbox_view(request: HttpRequest) -> HttpResponse:
    """The dev mailbox: what the local SMTP sink received, newest first."""
    context = {
        **admin.site.each_context(request),
        "title": _("Dev mailbox"),
        "messages_list": list_messages(settings.EDM_SINK_DIR, limit=200),
        "folder": settings.EDM_SINK_DIR,
    }
    return TemplateResponse(request, "admin/delivery/mailbox.html", context)


def mailbox_message_view(request: HttpRequest, name: str) -> HttpResponse:
    from email import message_from_bytes
    from email.policy import default as default_policy

    path = settings.EDM_SINK_DIR / name
    if "/" in name or not name.endswith(".eml") or not path.is_file():
        raise Http404(_("No such message"))
    raw = path.read_bytes()
    message = message_from_bytes(raw, policy=default_policy)
    html = message.get_body(("html",))
    text = message.get_body(("plain",))
    context = {
        **admin.site.each_context(request),
        "title": str(message.get("Subject") or _("(no subject)")),
        "headers": [(k, str(v)) for k, v in message.items()],
        "html": html.get_content() if html is not None else "",
        "text": text.get_content() if text is not None else "",
        "size": len(raw),
        "raw": raw.decode("utf-8", "replace"),
    }
    return TemplateResponse(request, "admin/delivery/mailbox_message.html", context)


import delivery.intake.admin  # noqa: E402,F401
import delivery.monitor.admin  # noqa: E402,F401
