"""A validated design rendered on the server to email-safe HTML (MJML, by mrml) and its text.

Pure: no database. The output is a Jinja template like any other (personalization stays
``{{ ... }}``): table layout, styles inlined by MJML, Outlook's conditional tables, one
``<style>`` block for the mobile breakpoint and dark mode, ``alt`` on every image, the preheader.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass

import mjml
from django.utils import translation
from django.utils.translation import gettext as _

from campaigns.content.schema import FONTS
from mailkit.render import html_to_text

__all__ = ["RenderedDesign", "design_render"]

_HEADING_SIZES = {1: 28, 2: 22, 3: 18}
_SOCIAL_NAMES = {"x": "x", "web": "web", "wechat": "web", "weibo": "web", "douyin": "web"}
_STYLE_ELEMENT = re.compile(r"<style\b[^>]*>(.*?)</style>", re.DOTALL | re.IGNORECASE)
_CONDITIONAL = re.compile(r"<!--\[if[^\]]*\]>.*?<!\[endif\]-->", re.DOTALL)
_FONT_IMPORT = re.compile(r"<link\b[^>]*fonts\.googleapis[^>]*>|@import url\([^)]*\);", re.I)
_THUNDERBIRD_RULE = re.compile(r"\.moz-text-html[^{}]*\{[^{}]*\}")
_HEAD_END = re.compile(r"</head>", re.IGNORECASE)


@dataclass(frozen=True)
class RenderedDesign:
    html: str  # a Jinja HTML template
    text: str  # a Jinja text template
    mjml: str


def _attr(value: object) -> str:
    return html.escape(str(value), quote=True)


def _text(value: str) -> str:
    return html.escape(value, quote=False)


def _padding(values: list[int], default: str) -> str:
    return " ".join(f"{v}px" for v in values) if values else default


def _common(style: dict, *, padding: str = "10px 24px") -> str:
    parts = [f'padding="{_padding(style["padding"], padding)}"']
    if style["align"]:
        parts.append(f'align="{style["align"]}"')
    if style["color"]:
        parts.append(f'color="{style["color"]}"')
    if style["font"]:
        parts.append(f'font-family="{_attr(FONTS[style["font"]])}"')
    if style["background"]:
        parts.append(f'container-background-color="{style["background"]}"')
    return " ".join(parts)


def _rich(fragment: str, link_color: str) -> str:
    # Sanitized text HTML carries no attributes but href: the email's styles are added here,
    # inline, because a mail client ignores a style sheet's rules for links and paragraphs.
    fragment = re.sub(r"<a( href=\"[^\"]*\")?>", rf'<a\1 style="color:{link_color};">', fragment)
    fragment = fragment.replace("<p>", '<p style="margin:0 0 12px;">')
    return fragment.replace("<ul>", '<ul style="margin:0 0 12px;padding-left:24px;">').replace(
        "<ol>", '<ol style="margin:0 0 12px;padding-left:24px;">'
    )


def _block_mjml(block: dict, settings: dict) -> str:
    kind, style = block["type"], block["style"]
    if kind == "heading":
        size = style["font_size"] or _HEADING_SIZES[block["level"]]
        tag = f"h{block['level']}"
        return (
            f'<mj-text {_common(style)} font-size="{size}px" font-weight="700" '
            f'line-height="1.3" css-class="sk-text"><{tag} style="margin:0;font-size:{size}px;">'
            f"{_text(block['text'])}</{tag}></mj-text>"
        )
    if kind == "text":
        size = style["font_size"] or 15
        return (
            f'<mj-text {_common(style)} font-size="{size}px" line-height="1.6" '
            f'css-class="sk-text">{_rich(block["html"], settings["link_color"])}</mj-text>'
        )
    if kind == "html":
        return f'<mj-text {_common(style)} css-class="sk-text">{block["html"]}</mj-text>'
    if kind == "image":
        width = f' width="{block["width"]}px"' if block["width"] else ""
        href = f' href="{_attr(block["href"])}"' if block["href"] else ""
        return (
            f'<mj-image {_common(style, padding="10px 24px")} src="{_attr(block["src"])}" '
            f'alt="{_attr(block["alt"])}"{href}{width} />'
        )
    if kind == "button":
        background = style["background"] or settings["link_color"]
        colour = style["color"] or "#ffffff"
        size = style["font_size"] or 16
        font = f' font-family="{_attr(FONTS[style["font"]])}"' if style["font"] else ""
        return (
            f'<mj-button href="{_attr(block["href"])}" background-color="{background}" '
            f'color="{colour}" font-size="{size}px" font-weight="600" border-radius="6px" '
            f'inner-padding="12px 24px" align="{style["align"] or "center"}" '
            f'padding="{_padding(style["padding"], "12px 24px")}"{font}>'
            f"{_text(block['label'])}</mj-button>"
        )
    if kind == "divider":
        return (
            f'<mj-divider border-color="{style["color"] or "#e5e7eb"}" border-width="1px" '
            f'padding="{_padding(style["padding"], "12px 24px")}" />'
        )
    if kind == "spacer":
        return f'<mj-spacer height="{block["height"]}px" />'
    if kind == "social":
        elements = "".join(
            f'<mj-social-element name="{_SOCIAL_NAMES.get(link["network"], link["network"])}" '
            f'href="{_attr(link["href"])}" alt="{_attr(link["label"] or link["network"])}">'
            f"{_text(link['label'])}</mj-social-element>"
            for link in block["links"]
        )
        return (
            f'<mj-social mode="horizontal" icon-size="24px" font-size="13px" '
            f'align="{style["align"] or "center"}" '
            f'padding="{_padding(style["padding"], "10px 24px")}">{elements}</mj-social>'
        )
    if kind == "footer":
        return (
            f'<mj-text {_common(style, padding="16px 24px")} font-size="12px" line-height="1.6" '
            f'align="{style["align"] or "center"}" color="{style["color"] or "#6b7280"}" '
            f'css-class="sk-muted">{_footer_html(block, settings)}</mj-text>'
        )
    raise ValueError(kind)


def _footer_labels(block: dict, settings: dict) -> tuple[str, str]:
    # The labels are the recipient's words: in the design's language, not the editor's.
    with translation.override(settings["lang"]):
        return (
            block["unsubscribe_label"] or _("Unsubscribe"),
            block["webview_label"] or _("View in your browser"),
        )


def _footer_html(block: dict, settings: dict) -> str:
    unsubscribe, webview = _footer_labels(block, settings)
    link = f'style="color:{settings["link_color"]};"'
    lines = [_text(block["address"])] if block["address"] else []
    links = [f'<a href="{{{{ unsubscribe_url }}}}" {link}>{_text(unsubscribe)}</a>']
    if block["webview_label"]:
        links.append(f'<a href="{{{{ webview_url }}}}" {link}>{_text(webview)}</a>')
    lines.append(" &middot; ".join(links))
    return "<br>".join(lines)


def _condition_tags(condition: dict | None) -> tuple[str, str]:
    if condition is None:
        return "", ""
    field, op = condition["field"], condition["op"]
    value = json.dumps(condition["value"], ensure_ascii=False)
    test = {
        "equals": f"({field} | string) == {value}",
        "not_equals": f"({field} | string) != {value}",
        "is_set": f"({field} | default('') | string | trim)",
        "is_not_set": f"not ({field} | default('') | string | trim)",
    }[op]
    return "{% if " + test + " %}", "{% endif %}"


def design_mjml(design: dict) -> str:
    settings = design["settings"]
    font = FONTS[settings["font"]]
    sections = []
    for section in design["sections"]:
        columns = []
        widths = _column_widths(section["columns"])
        for column, width in zip(section["columns"], widths, strict=True):
            blocks = "".join(_block_mjml(block, settings) for block in column["blocks"])
            columns.append(f'<mj-column width="{width}">{blocks}</mj-column>')
        opening, closing = _condition_tags(section["condition"])
        background = section["background"] or settings["content_background"]
        sections.append(
            (f"<mj-raw>{opening}</mj-raw>" if opening else "")
            + f'<mj-section background-color="{background}" css-class="sk-card" '
            f'padding="{_padding(section["padding"], "12px 0")}">{"".join(columns)}</mj-section>'
            + (f"<mj-raw>{closing}</mj-raw>" if closing else "")
        )
    preheader = (
        f"<mj-preview>{_text(settings['preheader'])}</mj-preview>" if settings["preheader"] else ""
    )
    return (
        f'<mjml lang="{settings["lang"]}"><mj-head>{preheader}'
        f'<mj-breakpoint width="{settings["breakpoint"]}px" />'
        f'<mj-attributes><mj-all font-family="{_attr(font)}" />'
        f'<mj-text color="{settings["text_color"]}" /></mj-attributes>'
        f'</mj-head><mj-body width="{settings["width"]}px" '
        f'background-color="{settings["background"]}" css-class="sk-body">'
        f"{''.join(sections)}</mj-body></mjml>"
    )


def _column_widths(columns: list[dict]) -> list[str]:
    given = sum(c["width"] for c in columns)
    unset = [c for c in columns if not c["width"]]
    share = (100 - given) / len(unset) if unset else 0
    return [f"{c['width'] or share:g}%" for c in columns]


_DARK_CSS = (
    "@media (prefers-color-scheme: dark) {"
    " .sk-body, .sk-body > table { background-color: #111827 !important; }"
    " .sk-card, .sk-card > table { background-color: #1f2937 !important; }"
    " .sk-text div, .sk-text h1, .sk-text h2, .sk-text h3 { color: #f3f4f6 !important; }"
    " .sk-muted div { color: #9ca3af !important; } }"
)


def _one_style_block(document: str, *, dark_mode: bool) -> str:
    """MJML writes several style elements: merged into one, fonts and Outlook 2007's dropped."""
    document = re.sub(r"<!--\[if lte mso 11\]>.*?<!\[endif\]-->", "", document, flags=re.DOTALL)
    document = _FONT_IMPORT.sub("", document)
    # Style elements inside Outlook's conditional comments (none left) would be kept as is.
    kept = _CONDITIONAL.findall(document)
    masked = _CONDITIONAL.sub("\x00", document)
    rules = [_THUNDERBIRD_RULE.sub("", css).strip() for css in _STYLE_ELEMENT.findall(masked)]
    masked = _STYLE_ELEMENT.sub("", masked)
    masked = re.sub(r"<!--\[if !mso\]><!-->\s*<!--<!\[endif\]-->", "", masked)
    if dark_mode:
        rules.append(_DARK_CSS)
    css = "\n".join(rule for rule in rules if rule)
    meta = (
        '<meta name="color-scheme" content="light dark"><meta name="supported-color-schemes" content="light dark">'
        if dark_mode
        else ""
    )
    masked = _HEAD_END.sub(
        lambda _m: f'{meta}<style type="text/css">\n{css}\n</style></head>', masked, count=1
    )
    pieces = iter(kept)
    return re.sub("\x00", lambda _m: next(pieces), masked)


def _text_part(design: dict) -> str:
    settings = design["settings"]
    lines: list[str] = []
    for section in design["sections"]:
        opening, closing = _condition_tags(section["condition"])
        if opening:
            lines.append(opening)
        for column in section["columns"]:
            for block in column["blocks"]:
                lines.extend(_block_text(block, settings))
        if closing:
            lines.append(closing)
    body = "\n\n".join(line for line in lines if line.strip())
    return re.sub(r"[ \t]+$", "", body, flags=re.MULTILINE).strip() + "\n"


def _block_text(block: dict, settings: dict) -> list[str]:
    kind = block["type"]
    if kind == "heading":
        return [block["text"]]
    if kind in ("text", "html"):
        return [html_to_text(block["html"]).strip()]
    if kind == "image":
        return [f"{block['alt']}: {block['href']}"] if block["href"] and block["alt"] else []
    if kind == "button":
        return [f"{block['label']}: {block['href']}"]
    if kind == "divider":
        return ["-" * 20]
    if kind == "social":
        return [
            "\n".join(
                f"{link['label'] or link['network']}: {link['href']}" for link in block["links"]
            )
        ]
    if kind == "footer":
        unsubscribe, webview = _footer_labels(block, settings)
        out = [block["address"]] if block["address"] else []
        out.append(f"{unsubscribe}: {{{{ unsubscribe_url }}}}")
        if block["webview_label"]:
            out.append(f"{webview}: {{{{ webview_url }}}}")
        return ["\n".join(out)]
    return []


def design_render(*, design: dict) -> RenderedDesign:
    """HTML and text templates of a design that campaigns.content.schema validated."""
    source = design_mjml(design)
    document = mjml.mjml2html(source)
    document = _one_style_block(document, dark_mode=design["settings"]["dark_mode"])
    return RenderedDesign(html=document, text=_text_part(design), mjml=source)
