"""Admin of the bounce intake: reports (read-only, raw viewable), policies, mailboxes, rates."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _
from unfold.admin import ModelAdmin, TabularInline
from unfold.decorators import display

from delivery.intake.models import (
    BounceMessage,
    BounceOutcome,
    BouncePolicy,
    Mailbox,
    MailboxSecurity,
)
from delivery.selectors import bounce_rates_by_campaign, bounce_rates_by_domain

_STATUS_LABELS = {
    "applied": "success",
    "unmatched": "warning",
    "ignored": "info",
    "error": "danger",
}


class BounceOutcomeInline(TabularInline):
    model = BounceOutcome
    extra = 0
    can_delete = False
    fields = (
        "recipient",
        "kind",
        "reason",
        "enhanced_status",
        "smtp_code",
        "diagnostic",
        "delivery",
        "counted",
        "action",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(BounceMessage)
class BounceMessageAdmin(ModelAdmin):
    list_display = (
        "id",
        "received_at",
        "source",
        "kind",
        "status_badge",
        "delivery_link",
        "matched_by",
        "size",
    )
    list_filter = ("status", "source", "kind", "matched_by")
    search_fields = ("envelope_to", "envelope_from", "sha256", "outcomes__recipient")
    date_hierarchy = "received_at"
    inlines = (BounceOutcomeInline,)
    show_full_result_count = False
    fields = (
        "received_at",
        "source",
        "status",
        "kind",
        "delivery",
        "matched_by",
        "envelope_from",
        "envelope_to",
        "size",
        "sha256",
        "error",
        "summary",
        "raw_text",
    )

    @display(description=_("Status"), label=_STATUS_LABELS)
    def status_badge(self, obj: BounceMessage) -> str:
        return obj.status

    @display(description=_("Delivery"))
    def delivery_link(self, obj: BounceMessage) -> str:
        if not obj.delivery_id:
            return "-"
        url = reverse("admin:delivery_delivery_change", args=[obj.delivery_id])
        return format_html('<a href="{}">#{}</a>', url, obj.delivery_id)

    @display(description=_("Raw message"))
    def raw_text(self, obj: BounceMessage) -> str:
        raw = bytes(obj.raw or b"")
        note = (
            "\n\n"
            + gettext("[... first %(kept)s of %(size)s bytes kept]")
            % {"kept": len(raw), "size": obj.size}
            if obj.truncated
            else ""
        )
        return format_html(
            '<pre style="white-space: pre-wrap; word-break: break-all; max-height: 40rem; '
            'overflow: auto">{}{}</pre>',
            raw.decode("utf-8", "replace"),
            note,
        )

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        return self.fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def get_urls(self):
        return [
            path(
                "rates/",
                self.admin_site.admin_view(bounce_rates_view),
                name="delivery_bounce_rates",
            ),
            *super().get_urls(),
        ]


@admin.register(BouncePolicy)
class BouncePolicyAdmin(ModelAdmin):
    list_display = ("kind", "count", "window_days", "action", "updated_at")
    list_editable = ("count", "window_days", "action")


class MailboxForm(forms.ModelForm):
    password = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        label=_("Password"),
        help_text=_("Stored encrypted, never shown again. Leave empty to keep the current one."),
    )

    class Meta:
        model = Mailbox
        fields = (
            "name",
            "protocol",
            "host",
            "port",
            "security",
            "username",
            "folder",
            "delete_after_processing",
            "enabled",
        )

    def clean(self):
        cleaned = super().clean()
        host = (cleaned.get("host") or "").strip()
        if cleaned.get("security") == MailboxSecurity.NONE and host not in (
            "localhost",
            "127.0.0.1",
            "::1",
        ):
            raise forms.ValidationError(
                gettext(
                    "Without TLS the password would cross the network in the clear: 'None' is "
                    "allowed only for a server on this machine."
                )
            )
        if not self.instance.password_encrypted and not cleaned.get("password"):
            self.add_error("password", gettext("A password is required."))
        return cleaned

    def save(self, commit: bool = True) -> Mailbox:
        mailbox = super().save(commit=False)
        if self.cleaned_data.get("password"):
            mailbox.set_password(self.cleaned_data["password"])
        if commit:
            mailbox.save()
        return mailbox


@admin.register(Mailbox)
class MailboxAdmin(ModelAdmin):
    form = MailboxForm
    list_display = (
        "name",
        "protocol",
        "host",
        "port",
        "security",
        "enabled",
        "delete_after_processing",
        "last_polled_at",
        "error_short",
    )
    list_filter = ("enabled", "protocol")
    readonly_fields = ("last_polled_at", "last_error", "uidvalidity", "last_uid")
    actions = ("poll_now",)

    @display(description=_("Last error"))
    def error_short(self, obj: Mailbox) -> str:
        return (obj.last_error or "")[:80] or "-"

    @admin.action(description=_("Poll now"))
    def poll_now(self, request: HttpRequest, queryset: QuerySet[Mailbox]) -> None:
        from delivery.intake.tasks import poll_mailbox

        ids = list(queryset.values_list("pk", flat=True))
        for mailbox_id in ids:
            poll_mailbox.delay_on_commit(mailbox_id)
        self.message_user(
            request,
            ngettext(
                "Polling %(count)d mailbox in the background; refresh to see the result.",
                "Polling %(count)d mailboxes in the background; refresh to see the result.",
                len(ids),
            )
            % {"count": len(ids)},
            messages.SUCCESS,
        )


BOUNCE_RATE_WARN = 0.02


def _view_rows(rows) -> list[dict]:
    return [
        {
            "label": r.label,
            "sent": r.sent,
            "bounced": r.bounced,
            "complained": r.complained,
            "bounce_pct": f"{r.bounce_rate * 100:.2f}",
            "complaint_pct": f"{r.complaint_rate * 100:.2f}",
            "bounce_level": "warning" if r.bounce_rate >= BOUNCE_RATE_WARN else "ok",
            "complaint_level": r.complaint_level,
        }
        for r in rows
    ]


def bounce_rates_view(request: HttpRequest) -> HttpResponse:
    """Bounce and complaint rates per campaign and per recipient domain (last 30 days)."""
    context = {
        **admin.site.each_context(request),
        "title": _("Bounce and complaint rates"),
        "tables": [
            (_("Per campaign (latest 50)"), _view_rows(bounce_rates_by_campaign())),
            (
                _("Per recipient domain (last 30 days, busiest 50)"),
                _view_rows(bounce_rates_by_domain()),
            ),
        ],
    }
    return TemplateResponse(request, "admin/delivery/bounce_rates.html", context)
