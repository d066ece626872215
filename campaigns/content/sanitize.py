"""What the block editor lets through: links, text HTML and raw HTML, sanitized by nh3 (Ammonia).

The product's rule: a design is data from a browser, so none of its HTML is trusted.
- Links (buttons, images, text links, social links) are http(s) or mailto URLs, or exactly one
  of the message's own links (``{{ unsubscribe_url }}``, ``{{ webview_url }}``).
- Rich text keeps paragraphs, line breaks, bold, italic, underline, strike, links, lists and
  plain spans: no attributes but a link's href (style comes from the block's settings).
- A raw HTML block keeps the tags of email layout (tables, images, text formatting) with
  alignment attributes and inline styles limited to visual CSS properties; scripts, forms,
  frames, event handlers, <style> and comments are removed with their content where they
  could carry any.
Jinja expressions in text stay text: they are rendered later in the sandbox, like any template.
"""

from __future__ import annotations

import html
import re

import nh3

URL_SCHEMES = frozenset({"http", "https", "mailto"})
MESSAGE_LINKS = frozenset({"{{ unsubscribe_url }}", "{{ webview_url }}"})
MAX_URL_CHARS = 2000
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*):")

_TEXT_TAGS = {"p", "br", "strong", "b", "em", "i", "u", "s", "a", "ul", "ol", "li", "span"}
_RAW_TAGS = _TEXT_TAGS | {
    "table", "thead", "tbody", "tfoot", "tr", "td", "th", "div", "img", "h1", "h2", "h3",
    "h4", "h5", "h6", "hr", "small", "sup", "sub", "blockquote", "center", "font", "code",
    "pre",
}  # fmt: skip
_RAW_ATTRIBUTES = {
    "*": {"style", "align", "valign", "width", "height", "bgcolor", "dir", "lang", "title"},
    "a": {"href", "target"},
    "img": {"src", "alt", "border"},
    "table": {"cellpadding", "cellspacing", "border", "role"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan"},
    "font": {"color", "face", "size"},
}
_STYLE_PROPERTIES = {
    "background", "background-color", "border", "border-bottom", "border-collapse",
    "border-color", "border-left", "border-radius", "border-right", "border-spacing",
    "border-style", "border-top", "border-width", "color", "display", "font", "font-family",
    "font-size", "font-style", "font-weight", "height", "letter-spacing", "line-height",
    "margin", "margin-bottom", "margin-left", "margin-right", "margin-top", "max-width",
    "min-width", "padding", "padding-bottom", "padding-left", "padding-right", "padding-top",
    "text-align", "text-decoration", "text-transform", "vertical-align", "width",
    "white-space", "word-break",
}  # fmt: skip
_CLEAN_CONTENT = {"script", "style", "iframe", "object", "embed", "template", "noscript", "svg"}


def url_allowed(value: str) -> bool:
    """An http(s) or mailto URL, or one of the message's own links."""
    value = value.strip()
    if value in MESSAGE_LINKS:
        return True
    if not value or len(value) > MAX_URL_CHARS or any(c in value for c in "\x00\r\n\t<>\"'`"):
        return False
    if "{{" in value or "{%" in value:
        return False  # a template expression decides where a link goes: not from a browser
    scheme = _SCHEME.match(value)
    if scheme is None or scheme.group(1).lower() not in URL_SCHEMES:
        return False
    return not value.lower().startswith(("http:///", "https:///")) and (
        scheme.group(1).lower() == "mailto" or "//" in value[:10]
    )


def _links_only(tag: str, attribute: str, value: str) -> str | None:
    if attribute in ("href", "src"):
        return value.strip() if url_allowed(value) else None
    return value


def _clean(html: str, *, tags: set[str], attributes: dict, **options: object) -> str:
    return nh3.clean(
        html,
        tags=tags,
        attributes=attributes,
        attribute_filter=_links_only,
        clean_content_tags=_CLEAN_CONTENT,
        link_rel=None,
        url_schemes=set(URL_SCHEMES),
        **options,
    ).strip()


def text_html_clean(html: str) -> str:
    """Rich text of a text block: inline formatting, links and lists, no attributes but href."""
    return _clean(html, tags=_TEXT_TAGS, attributes={"a": {"href"}})


def raw_html_clean(html: str) -> str:
    """A raw HTML block: email layout tags, visual inline styles, safe links and images."""
    return _clean(
        html,
        tags=_RAW_TAGS,
        attributes=_RAW_ATTRIBUTES,
        filter_style_properties=_STYLE_PROPERTIES,
    )


def plain_text_clean(text: str) -> str:
    """A one-line text (heading, button label): no tags, no control characters; the renderer
    escapes it."""
    without_tags = html.unescape(nh3.clean(text, tags=set(), clean_content_tags=_CLEAN_CONTENT))
    return " ".join("".join(c for c in without_tags if c.isprintable() or c == " ").split())
