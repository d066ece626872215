"""Admin for outgoing webhooks and their deliveries (registered from campaigns.admin)."""

from __future__ import annotations

import secrets

from django import forms
from django.contrib import admin
from django.utils.translation import gettext_lazy
from unfold.admin import ModelAdmin, TabularInline
from unfold.decorators import display

from campaigns.tracking_models import Webhook, WebhookDelivery, WebhookEvent


class WebhookForm(forms.ModelForm):
    url = forms.URLField(max_length=1000, assume_scheme="https", label=gettext_lazy("URL"))
    events = forms.MultipleChoiceField(
        choices=WebhookEvent.choices,
        widget=forms.CheckboxSelectMultiple,
        required=True,
        label=gettext_lazy("Events"),
    )

    class Meta:
        model = Webhook
        fields = ("name", "url", "events", "secret", "enabled")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.instance.pk and not self.initial.get("secret"):
            self.initial["secret"] = secrets.token_hex(24)


class WebhookDeliveryInline(TabularInline):
    model = WebhookDelivery
    extra = 0
    max_num = 0
    can_delete = False
    fields = ("event", "status", "attempts", "last_status_code", "last_error", "next_attempt_at")
    readonly_fields = fields
    ordering = ("-id",)

    def get_queryset(self, request):
        # The latest few only: a busy hook has millions.
        ids = list(WebhookDelivery.objects.order_by("-id").values_list("id", flat=True)[:20])
        return super().get_queryset(request).filter(id__in=ids)


@admin.register(Webhook)
class WebhookAdmin(ModelAdmin):
    form = WebhookForm
    list_display = ("name", "url", "event_list", "enabled")
    inlines = (WebhookDeliveryInline,)

    @display(description=gettext_lazy("Events"))
    def event_list(self, obj: Webhook) -> str:
        return ", ".join(obj.events)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ModelAdmin):
    list_display = (
        "id",
        "webhook",
        "event",
        "status",
        "attempts",
        "last_status_code",
        "created_at",
    )
    list_filter = ("status", "event", "webhook")
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
