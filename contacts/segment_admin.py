"""Admin for segments: a row editor over the JSON rules with a live count preview."""

from __future__ import annotations

import json

from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST
from unfold.admin import ModelAdmin
from unfold.decorators import display

from contacts.models import Contact, ContactList, ContactStatus, Segment, SubscriptionStatus
from contacts.segments import (
    ATTRIBUTE_OPS,
    CONTACT_STATUSES,
    FIELD_OPS,
    OP_LABELS,
    SUBSCRIPTION_STATUSES,
    SegmentRuleError,
    rules_describe,
    rules_validate,
    segment_preview,
)

__all__ = ["SegmentAdmin"]

# What the rule editor shows for each field (the JSON keeps the names of contacts.segments).
FIELD_LABELS = {
    "email": gettext_lazy("Email"),
    "name": gettext_lazy("Name"),
    "status": gettext_lazy("Contact status"),
    "created_at": gettext_lazy("Date added"),
    "list": gettext_lazy("List membership"),
    "subscribed_at": gettext_lazy("Date subscribed"),
    "attributes.": gettext_lazy("Attribute..."),
}
# Attribute names offered while typing one: the keys of the newest contacts (a cheap
# primary-key scan, never a pass over every contact).
ATTRIBUTE_SAMPLE = 1000
ATTRIBUTE_KEYS_MAX = 200
# The words the editor's script writes (it has no gettext of its own).
EDITOR_WORDS = {
    "value": gettext_lazy("value"),
    "days": gettext_lazy("days"),
    "number": gettext_lazy("number"),
    "field": gettext_lazy("Field"),
    "attribute_name": gettext_lazy("Attribute name"),
    "attribute_placeholder": gettext_lazy("attribute name"),
    "operator": gettext_lazy("Operator"),
    "status": gettext_lazy("status: %(status)s"),
    "any_list": gettext_lazy("any list"),
    "remove": gettext_lazy("Remove"),
}
RULES_HELP = gettext_lazy(
    "Built with the rule rows below; you can also paste or edit the JSON here, e.g. "
    '[{"field": "attributes.city", "op": "eq", "value": "Paris"}].'
)


@admin.register(Segment)
class SegmentAdmin(ModelAdmin):
    list_display = ("name", "match", "summary", "updated_at")
    search_fields = ("name", "description")
    fields = ("name", "description", "match", "rules")
    change_form_after_template = "admin/contacts/segment_editor.html"

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        formfield = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name == "rules" and formfield is not None:
            formfield.help_text = RULES_HELP
        return formfield

    @display(description=gettext_lazy("Rules"))
    def summary(self, obj: Segment) -> str:
        try:
            return rules_describe(rules_validate(obj.rules, match=obj.match), match=obj.match)
        except SegmentRuleError as exc:
            return _("Invalid: %(error)s") % {"error": exc}

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("preview/", wrap(self.preview_view), name="contacts_segment_preview"),
            *super().get_urls(),
        ]

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        editor = {
            "fields": {**FIELD_OPS, "attributes.": ATTRIBUTE_OPS},
            "labels": OP_LABELS,
            "field_labels": FIELD_LABELS,
            "attribute_keys": _recent_attribute_keys(),
            "lists": list(ContactList.objects.values("id", "name")),
            "contact_statuses": CONTACT_STATUSES,
            "subscription_statuses": SUBSCRIPTION_STATUSES,
            "status_labels": {**dict(SubscriptionStatus.choices), **dict(ContactStatus.choices)},
            "words": EDITOR_WORDS,
        }
        extra_context = {**(extra_context or {}), "segment_editor": editor}
        return super().changeform_view(request, object_id, form_url, extra_context)

    def preview_view(self, request: HttpRequest) -> JsonResponse:
        return _preview(request, self)


def _recent_attribute_keys() -> list[str]:
    keys: set[str] = set()
    recent = Contact.objects.order_by("-id").values_list("attributes", flat=True)
    for attributes in recent[:ATTRIBUTE_SAMPLE]:
        if isinstance(attributes, dict):
            keys.update(attributes)
    return sorted(keys)[:ATTRIBUTE_KEYS_MAX]


@require_POST
def _preview(request: HttpRequest, model_admin: SegmentAdmin) -> JsonResponse:
    if not model_admin.has_view_permission(request):
        return JsonResponse({"errors": [_("Permission denied.")]}, status=403)
    try:
        payload = json.loads(request.body or b"{}")
    except ValueError:
        return JsonResponse({"errors": [_("The request is not JSON.")]}, status=400)
    rules = payload.get("rules")
    if isinstance(rules, str):
        try:
            rules = json.loads(rules)
        except ValueError as exc:
            return JsonResponse(
                {"errors": [_("The rules are not valid JSON: %(error)s") % {"error": exc}]},
                status=400,
            )
    try:
        result = segment_preview(rules=rules, match=payload.get("match") or "all")
    except SegmentRuleError as exc:
        return JsonResponse({"errors": exc.errors}, status=400)
    return JsonResponse({**result, "errors": []})
