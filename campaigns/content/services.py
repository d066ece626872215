"""Writes of the block editor: a design saved on a template, a template made from a starter."""

from __future__ import annotations

import json

from django.conf import settings
from django.db import transaction
from django.templatetags.static import static
from django.utils.translation import gettext as _

from campaigns.content.render import RenderedDesign, design_render
from campaigns.content.schema import SCHEMA_VERSION, DesignError, design_parse
from campaigns.content.starters import starter_design, starter_subject
from campaigns.models import Template
from mailkit.errors import TemplateError
from mailkit.render import TemplateSource, compile_templates


def design_rendered_checked(*, design: dict, subject: str = "-") -> RenderedDesign:
    """Render a validated design and compile the result as a send would: an error is found
    now, in the editor, never in the middle of a send."""
    rendered = design_render(design=design)
    try:
        compile_templates(
            TemplateSource(subject=subject or "-", html=rendered.html, text=rendered.text)
        )
    except TemplateError as exc:
        raise DesignError(str(exc)) from exc
    return rendered


@transaction.atomic
def template_design_save(
    *, template: Template | None, name: str, subject: str, raw_design: str | bytes
) -> Template:
    """Validate the browser's design, render it and store design, HTML and text together."""
    design = design_parse(raw_design)
    name, subject = name.strip()[:200], " ".join(subject.split())[:998]
    if not name or not subject:
        raise DesignError(_("A template needs a name and a subject."))
    rendered = design_rendered_checked(design=design, subject=subject)
    if Template.objects.filter(name=name).exclude(pk=getattr(template, "pk", None)).exists():
        raise DesignError(_("Another template already has this name."))
    template = template or Template()
    template.name, template.subject = name, subject
    template.design, template.design_version = design, SCHEMA_VERSION
    template.html, template.text = rendered.html, rendered.text
    template.save()
    return template


def starter_image_base_url() -> str:
    """The starters' images, where messages can load them (the public URL of the static files)."""
    return settings.EDM_PUBLIC_URL.rstrip("/") + static("campaigns/starters/").rstrip("/")


def template_from_starter(*, slug: str, language: str, name: str) -> Template:
    design = starter_design(slug=slug, language=language, image_base_url=starter_image_base_url())
    return template_design_save(
        template=None,
        name=name,
        subject=starter_subject(slug=slug, language=language),
        raw_design=json.dumps(design),
    )
