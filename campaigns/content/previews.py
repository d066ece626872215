"""Previews that tell the truth: the message as sent to a sample contact, its text part, its
size against Gmail's clipping, with images off, and its raw source."""

from __future__ import annotations

import re

from django.utils.translation import gettext as _

from campaigns.content.render import RenderedDesign
from mailkit.render import TemplateSource, compile_templates, contact_context, render_content

# Gmail hides what follows the first ~102 KB of a message's HTML behind "View entire message".
GMAIL_CLIP_BYTES = 102 * 1024
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


def design_preview(*, rendered: RenderedDesign, subject: str) -> dict:
    compiled = compile_templates(
        TemplateSource(subject=subject or "-", html=rendered.html, text=rendered.text)
    )
    content = render_content(compiled, _sample_context())
    marked, clipped = clip_marked(content.html)
    return {
        "subject": content.subject,
        "html": marked,
        "html_images_off": images_off(marked),
        "text": content.text,
        "source": rendered.html,
        "html_bytes": len(content.html.encode("utf-8")),
        "clip_bytes": GMAIL_CLIP_BYTES,
        "clipped": clipped,
    }
