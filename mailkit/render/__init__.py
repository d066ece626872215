"""Per-campaign template compilation and per-recipient rendering in a capped Jinja2 sandbox."""

from mailkit.render.html import html_to_text
from mailkit.render.limits import DEFAULT_LIMITS, RenderLimits
from mailkit.render.templates import (
    LAYOUT_NAME,
    CompiledTemplates,
    RenderedContent,
    TemplateSource,
    compile_templates,
    contact_context,
    render_content,
    template_variables,
)

__all__ = [
    "DEFAULT_LIMITS",
    "LAYOUT_NAME",
    "CompiledTemplates",
    "RenderLimits",
    "RenderedContent",
    "TemplateSource",
    "compile_templates",
    "contact_context",
    "html_to_text",
    "render_content",
    "template_variables",
]
