"""Previews that tell the truth: the message as sent to a sample contact, its text part, its
size against Gmail's clipping, with images off, and its raw source."""

from __future__ import annotations

import re

from django.utils.translation import gettext as _

from campaigns.content.render import RenderedDesign
from campaigns.preflight import GMAIL_CLIP_BYTES
from mailkit.render import TemplateSource, compile_templates, contact_context, render_content

_IMG_SRC = re.compile(r'(<img\b[^>]*?\s)src="[^"]*"', re.IGNORECASE)


def _sample_context() -> dict:
    return contact_context(
        email="sample@example.com",
        name="",
        attributes={},
        extra={
            "unsubscribe_url": "https://example.com/u/sample/",
            "webview_url": "https://example.com/v/sample/",
            "campaign_name": "Preview",
        },
    )


def clip_marked(html: str) -> tuple[str, bool]:
    """The HTML with a visible line where Gmail clips it, and whether it does."""
    data = html.encode("utf-8")
    if len(data) <= GMAIL_CLIP_BYTES:
        return html, False
    cut = data[:GMAIL_CLIP_BYTES].decode("utf-8", "ignore").rfind(">") + 1
    marker = (
        '<div style="border-top:3px dashed #dc2626;color:#dc2626;font:bold 13px sans-serif;'
        f'padding:4px;text-align:center">{_("Gmail clips the message here (102 KB)")}</div>'
    )
    return html[:cut] + marker + html[cut:], True


def images_off(html: str) -> str:
    """What a client that blocks images shows: the alt texts in the layout."""
    return _IMG_SRC.sub(r'\1src=""', html)


def preview_strings() -> dict:
    """The preview pane's words (the script puts the size in)."""
    return {
        "size": _("HTML %(size)s KB, under Gmail's 102 KB clipping."),
        "size_clipped": _("HTML %(size)s KB: Gmail clips it at 102 KB (the line in the preview)."),
    }


def preview_panes(*, html: str, text: str, source: str) -> dict:
    """What every preview shows (the block editor's, a template's, a campaign's): the HTML
    with Gmail's clipping line, with images off, the text part, the raw source and the size."""
    marked, clipped = clip_marked(html)
    return {
        "html": marked,
        "html_images_off": images_off(marked),
        "text": text,
        "source": source,
        "html_bytes": len(html.encode("utf-8")),
        "clip_bytes": GMAIL_CLIP_BYTES,
        "clipped": clipped,
    }


def design_preview(*, rendered: RenderedDesign, subject: str) -> dict:
    compiled = compile_templates(
        TemplateSource(subject=subject or "-", html=rendered.html, text=rendered.text)
    )
    content = render_content(compiled, _sample_context())
    return {
        "subject": content.subject,
        **preview_panes(html=content.html, text=content.text, source=rendered.html),
    }
