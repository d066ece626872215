"""Admin for sign-up forms (with the snippet to embed) and read-only consent records."""

from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import ValidationError
from django.forms import ModelForm, URLField
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from unfold.admin import ModelAdmin, TabularInline
from unfold.decorators import display

from contacts.admin import ContactAdmin
from contacts.forms import StorableJSONMixin
from contacts.models import ConsentRecord, SignupForm
from contacts.signup import signup_embed_html, signup_form_url
from mailkit.errors import TemplateError
from mailkit.render import TemplateSource, compile_templates, template_variables

__all__ = ["ConsentRecordAdmin", "ConsentRecordInline", "SignupFormAdmin"]


class SignupFormForm(ModelForm):
    success_url = URLField(
        required=False,
        assume_scheme="https",
        label=gettext_lazy("page after signing up"),
        help_text=SignupForm._meta.get_field("success_url").help_text,
    )

    class Meta:
        model = SignupForm
        fields = (
            "title",
            "contact_list",
            "enabled",
            "public_token",
            "intro",
            "ask_name",
            "attribute_fields",
            "consent_text",
            "double_opt_in",
            "from_email",
            "from_name",
            "confirmation_subject",
            "confirmation_body",
            "success_url",
        )

    def clean_attribute_fields(self):
        fields = self.cleaned_data.get("attribute_fields") or []
        if not isinstance(fields, list) or not all(
            isinstance(f, dict) and str(f.get("key") or "").strip() for f in fields
        ):
            raise ValidationError(
                _('A list of {"key": ..., "label": ..., "required": ...} objects.')
            )
        reserved = {"email", "name", "website"}
        clashes = [f["key"] for f in fields if f["key"] in reserved]
        if clashes:
            raise ValidationError(
                _("These keys are reserved: %(keys)s.") % {"keys": ", ".join(clashes)}
            )
        return fields

    def clean(self):
        data = super().clean()
        source = TemplateSource(
            subject=data.get("confirmation_subject") or "", html=data.get("confirmation_body") or ""
        )
        try:
            compile_templates(source)
            variables = template_variables(source)
        except TemplateError as exc:
            raise ValidationError(
                {"confirmation_body": _("Template error: %(error)s") % {"error": exc}}
            ) from exc
        if data.get("double_opt_in") and "confirm_url" not in variables:
            raise ValidationError(
                {"confirmation_body": _("Add the confirmation link: {{ confirm_url }}.")}
            )
        return data


@admin.register(SignupForm)
class SignupFormAdmin(StorableJSONMixin, ModelAdmin):
    form = SignupFormForm
    list_display = ("title", "contact_list", "double_opt_in", "enabled", "hosted_url")
    list_filter = ("enabled", "double_opt_in")
    search_fields = ("title",)
    autocomplete_fields = ("contact_list",)
    readonly_fields = ("hosted_url", "embed_snippet", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("title", "contact_list", "enabled", "public_token", "hosted_url")}),
        (
            gettext_lazy("Form"),
            {"fields": ("intro", "ask_name", "attribute_fields", "consent_text")},
        ),
        (
            gettext_lazy("Confirmation (double opt-in)"),
            {
                "fields": (
                    "double_opt_in",
                    "from_email",
                    "from_name",
                    "confirmation_subject",
                    "confirmation_body",
                )
            },
        ),
        (gettext_lazy("After submitting"), {"fields": ("success_url",)}),
        (gettext_lazy("Embed on your site"), {"fields": ("embed_snippet",)}),
    )

    @display(description=gettext_lazy("Hosted form"))
    def hosted_url(self, obj: SignupForm) -> str:
        if not obj.pk:
            return "-"
        url = signup_form_url(obj)
        return format_html('<a href="{}" target="_blank" rel="noopener">{}</a>', url, url)

    @display(description=gettext_lazy("HTML to copy"))
    def embed_snippet(self, obj: SignupForm) -> str:
        if not obj.pk:
            return _("Save the form first.")
        return format_html(
            '<textarea readonly rows="12" cols="90" style="font-family:monospace" '
            'onclick="this.select()">{}</textarea><p>{}</p>',
            signup_embed_html(obj),
            _(
                'A plain form with no script; the hidden "website" field is a honeypot for bots '
                "and must stay empty."
            ),
        )


class _ReadOnly:
    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class ConsentRecordInline(_ReadOnly, TabularInline):
    model = ConsentRecord
    fk_name = "contact"
    extra = 0
    can_delete = False
    fields = ("created_at", "subscription", "action", "source", "ip", "user_agent", "form_text")
    readonly_fields = fields
    verbose_name_plural = gettext_lazy("Consent history")


@admin.register(ConsentRecord)
class ConsentRecordAdmin(_ReadOnly, ModelAdmin):
    list_display = ("created_at", "contact", "subscription", "action", "source", "ip")
    list_filter = ("action",)
    search_fields = ("contact__email", "source")
    list_select_related = ("contact", "subscription")
    readonly_fields = (
        "created_at",
        "contact",
        "subscription",
        "action",
        "source",
        "ip",
        "user_agent",
        "form",
        "form_text",
    )


# The consent history shows on the contact page, under its subscriptions.
ContactAdmin.inlines = (*ContactAdmin.inlines, ConsentRecordInline)
