"""Admin JSON endpoints of the content editors: thin, each calls one selector or service."""

from __future__ import annotations

import json

from django.contrib import admin
from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_POST

from campaigns.content.previews import design_preview, preview_strings
from campaigns.content.schema import (
    FONTS,
    SCHEMA_VERSION,
    SOCIAL_NETWORKS,
    DesignError,
    design_parse,
    design_validate,
)
from campaigns.content.services import (
    design_rendered_checked,
    starter_image_base_url,
    template_design_save,
)
from campaigns.content.starters import (
    LANGUAGES,
    STARTER_SLUGS,
    STARTERS,
    starter_design,
    starter_subject,
)
from campaigns.content.variables import template_variables_offered, variables_as_json
from campaigns.models import Template


@permission_required("campaigns.view_template", raise_exception=True)
def variables_view(request: HttpRequest) -> JsonResponse:
    """GET ?lists=1,2: the variables the contacts of those lists offer."""
    raw = request.GET.get("lists", "")
    list_ids = [int(part) for part in raw.split(",")[:100] if part.strip().isdigit()]
    variables = template_variables_offered(list_ids=list_ids)
    return JsonResponse({"variables": variables_as_json(variables)})


def _editor_strings() -> dict:
    """The editor's words, translated here: the script only shows them."""
    return {
        "types": {
            "heading": _("Heading"), "text": _("Text"), "image": _("Image"), "button": _("Button"),
            "divider": _("Divider"), "spacer": _("Spacer"), "social": _("Social links"),
            "footer": _("Footer"), "html": _("Raw HTML"),
        },
        "fonts": {"sans": _("Sans-serif"), "serif": _("Serif"), "mono": _("Monospace"), "rounded": _("Rounded")},
        "new_heading": _("A heading"), "new_text": _("Write your text here."),
        "new_button": _("Learn more"), "website": _("Website"), "drag": _("Drag to reorder"),
        "empty_column": _("Empty column: add a block."), "section": _("Section"),
        "conditional": _("shown to some contacts"), "remove": _("Remove"),
        "remove_section": _("Remove this section"), "remove_block": _("Remove this block"),
        "style": _("Style"), "color": _("Colour"), "background": _("Background"), "font": _("Font"),
        "font_size": _("Font size (px)"), "align": _("Alignment"), "padding": _("Padding (px)"),
        "default": _("Default"), "left": _("Left"), "center": _("Centre"), "right": _("Right"),
        "top": _("Top"), "bottom": _("Bottom"), "bold": _("Bold"), "italic": _("Italic"),
        "underline": _("Underline"), "link": _("Link"), "link_prompt": _("Link address (https:// or mailto:)"),
        "bullets": _("Bulleted list"), "numbers": _("Numbered list"), "add_link": _("Add a link"),
        "text": _("Text"), "level": _("Level"), "raw_html": _("HTML"),
        "raw_html_help": _("Scripts, forms, frames, style sheets and event handlers are removed; links must be http(s) or mailto."),
        "image_url": _("Image address"), "alt": _("Alternative text (shown when images are off)"),
        "width": _("Width (px)"), "label": _("Label"), "height": _("Height (px)"),
        "address": _("Postal address"), "unsubscribe_label": _("Unsubscribe link text"),
        "webview_label": _("'View in browser' link text (empty: no link)"),
        "footer_help": _("The unsubscribe link is always there: the law and the mailbox providers require it."),
        "upload": _("Upload an image"), "columns": _("Columns"),
        "show_only": _("Show this section only to contacts where"),
        "cond_field": _("Field or attribute (empty: everyone)"), "cond_op": _("Condition"),
        "cond_value": _("Value"), "op_equals": _("equals"), "op_not_equals": _("does not equal"),
        "op_is_set": _("has a value"), "op_is_not_set": _("has no value"),
        "email_settings": _("Email settings"), "preheader": _("Preheader"),
        "preheader_help": _("The line inbox lists show after the subject."),
        "breakpoint": _("Mobile breakpoint (px)"), "page_background": _("Page background"),
        "content_background": _("Content background"), "text_color": _("Text colour"),
        "link_color": _("Link and button colour"), "language": _("Language of the email"),
        "dark_mode": _("Adapt to dark mode"),
        "section_columns": {
            n: ngettext("Section with %(count)s column", "Section with %(count)s columns", n)
            % {"count": n}
            for n in (1, 2, 3)
        },
        "saving": _("Saving…"), "saved": _("Saved."),
    }  # fmt: skip


def _design_page(request: HttpRequest, template: Template | None, design: dict, subject: str):
    context = {
        "strings": _editor_strings(),
        "preview_strings": preview_strings(),
        "fonts_json": json.dumps(list(FONTS)),
        "networks_json": json.dumps(list(SOCIAL_NETWORKS)),
        "media_url": "",
        **admin.site.each_context(request),
        "title": _("Block editor"),
        "template": template,
        "design": design,
        "subject": subject,
        "name": template.name if template else "",
        "save_url": reverse("content_design_save", args=[template.pk])
        if template
        else reverse("content_design_create"),
        "preview_url": reverse("content_design_preview"),
        "variables_url": reverse("content_variables"),
        "opts": Template._meta,
    }
    return TemplateResponse(request, "admin/campaigns/content/editor.html", context)


@permission_required("campaigns.change_template", raise_exception=True)
def design_editor_view(request: HttpRequest, template_id: int) -> HttpResponse:
    template = get_object_or_404(Template, pk=template_id)
    design = template.design or {"version": SCHEMA_VERSION, "settings": {}, "sections": []}
    return _design_page(request, template, design_validate(design), template.subject)


@permission_required("campaigns.add_template", raise_exception=True)
def starters_view(request: HttpRequest) -> HttpResponse:
    """The starters' gallery: pick one (and a language), then edit it in the block editor."""
    context = {
        **admin.site.each_context(request),
        "title": _("New template from a starter"),
        "starters": STARTERS,
        "languages": [("en", _("English")), ("zh-Hans", _("Simplified Chinese"))],
        "opts": Template._meta,
    }
    return TemplateResponse(request, "admin/campaigns/content/starters.html", context)


@permission_required("campaigns.add_template", raise_exception=True)
def design_new_view(request: HttpRequest) -> HttpResponse:
    slug, language = request.GET.get("starter", "letter"), request.GET.get("lang", "en")
    if slug not in STARTER_SLUGS or language not in LANGUAGES:
        slug, language = "letter", "en"
    design = starter_design(slug=slug, language=language, image_base_url=starter_image_base_url())
    return _design_page(request, None, design, starter_subject(slug=slug, language=language))


def _saved(request: HttpRequest, template: Template | None) -> JsonResponse:
    try:
        template = template_design_save(
            template=template,
            name=request.POST.get("name", ""),
            subject=request.POST.get("subject", ""),
            raw_design=request.POST.get("design", ""),
        )
    except DesignError as exc:
        return JsonResponse({"ok": False, "error": str(exc)}, status=400)
    return JsonResponse(
        {
            "ok": True,
            "id": template.pk,
            "editor_url": reverse("content_design_edit", args=[template.pk]),
            "change_url": reverse("admin:campaigns_template_change", args=[template.pk]),
        }
    )


@require_POST
@permission_required("campaigns.change_template", raise_exception=True)
def design_save_view(request: HttpRequest, template_id: int) -> JsonResponse:
    return _saved(request, get_object_or_404(Template, pk=template_id))


@require_POST
@permission_required("campaigns.add_template", raise_exception=True)
def design_create_view(request: HttpRequest) -> JsonResponse:
    return _saved(request, None)


@require_POST
@permission_required("campaigns.view_template", raise_exception=True)
def design_preview_view(request: HttpRequest) -> JsonResponse:
    """The design rendered for a sample contact: HTML, text, size against Gmail's clip."""
    try:
        design = design_parse(request.POST.get("design", ""))
        rendered = design_rendered_checked(design=design)
        preview = design_preview(rendered=rendered, subject=request.POST.get("subject", ""))
    except DesignError as exc:
        return JsonResponse({"ok": False, "error": str(exc)}, status=400)
    return JsonResponse({"ok": True, **preview})
