"""CSS inlining and HTML-to-text conversion of templates, with their Jinja spans protected."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import css_inline
from inscriptis import get_text
from inscriptis.model.config import ParserConfig

from mailkit.errors import TemplateError

__all__ = ["STYLE_BLOCK", "html_to_text", "inline_css", "text_template_from_html", "tidy_text"]


_JINJA_SPAN = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
STYLE_BLOCK = re.compile(r"<style\b[^>]*>(.*?)</style\s*>", re.DOTALL | re.IGNORECASE)
_STYLE_BLOCK_ELEMENT = re.compile(r"<style\b[^>]*>.*?</style\s*>\s*", re.DOTALL | re.IGNORECASE)


@dataclass
class _Protected:
    text: str
    spans: list[str] = field(default_factory=list)
    # For each span: the ordinal of the tag it sits inside, or -1 for text.
    tags: list[int] = field(default_factory=list)


def _protect(source: str, *, comments: bool) -> _Protected:
    """Swap Jinja spans for tokens an HTML parser leaves alone.

    Outside tags a span becomes an HTML comment (when ``comments``) so the HTML5 parser does not
    move it out of a table; inside a tag it becomes a lowercase word (valid as an attribute value
    or name).
    """
    out: list[str] = []
    spans: list[str] = []
    tags: list[int] = []
    in_tag = False
    tag_ordinal = 0
    pos = 0
    for match in _JINJA_SPAN.finditer(source):
        chunk = source[pos : match.start()]
        was_in_tag = in_tag
        in_tag = _tag_state(chunk, in_tag)
        if in_tag and (not was_in_tag or "<" in chunk):
            tag_ordinal += 1
        tags.append(tag_ordinal if in_tag else -1)
        out.append(chunk)
        token = f"skyjinja{len(spans):05d}x"
        spans.append(match.group(0))
        out.append(f"<!--{token}-->" if comments and not in_tag else token)
        pos = match.end()
    out.append(source[pos:])
    return _Protected("".join(out), spans, tags)


def _tag_state(chunk: str, in_tag: bool) -> bool:
    for index, char in enumerate(chunk):
        if (
            char == "<"
            and index + 1 < len(chunk)
            and (chunk[index + 1].isalpha() or chunk[index + 1] in "/!")
        ):
            in_tag = True
        elif char == ">":
            in_tag = False
    return in_tag


_TOKEN = re.compile(r"<!--(skyjinja\d{5}x)-->|(skyjinja\d{5}x)")


def _restore(text: str, spans: list[str]) -> str:
    def put(match: re.Match[str]) -> str:
        return spans[int((match.group(1) or match.group(2))[8:13])]

    return _TOKEN.sub(put, text)


def _kept_in_order(text: str, protected: _Protected) -> bool:
    """True when an HTML-to-text conversion kept every template tag that matters, in order.

    Text spans must all survive in source order. Spans inside a tag may vanish (the converter
    drops most attributes) as long as a tag loses all of its {% %} spans or none.
    """
    seen = [int(match.group(2)[8:13]) for match in _TOKEN.finditer(text) if match.group(2)]
    if seen != sorted(set(seen)):
        return False
    kept = set(seen)
    statements_by_tag: dict[int, set[bool]] = {}
    for index, (span, tag) in enumerate(zip(protected.spans, protected.tags, strict=True)):
        if tag < 0:
            if index not in kept:
                return False
        elif span.startswith("{%"):
            statements_by_tag.setdefault(tag, set()).add(index in kept)
    return all(len(states) == 1 for states in statements_by_tag.values())


_START_TAG = re.compile(r"<([a-zA-Z][a-zA-Z0-9]*)(\s[^<>]*?)?(/?)>")
_STYLE_ATTR = re.compile(r"""\sstyle\s*=\s*("[^"]*"|'[^']*'|[^\s>]+)""", re.IGNORECASE)


def inline_css(source: str, *, extra_css: str = "", fragment: bool = False) -> str:
    """Inline CSS into the template source without letting the HTML parser restructure it.

    css_inline parses with an HTML5 parser that inserts tbody, moves text out of tables, and so
    on: fine for a document, fatal for a template with {% for %} between rows. So css_inline only
    computes the style attributes; they are copied onto the start tags of the original source,
    matched in order by tag name, and the original's <style> blocks are dropped.
    """
    protected = _protect(source, comments=True)
    try:
        if fragment:
            inlined = css_inline.inline_fragment(protected.text, extra_css)
        else:
            inliner = css_inline.CSSInliner(
                load_remote_stylesheets=False, extra_css=extra_css or None
            )
            inlined = inliner.inline(protected.text)
    except (css_inline.InlineError, ValueError) as exc:
        raise TemplateError(f"CSS inlining failed: {exc}", field="html") from exc
    styles: list[tuple[str, str | None]] = []
    for match in _START_TAG.finditer(inlined):
        style = _STYLE_ATTR.search(match.group(2) or "")
        styles.append((match.group(1).lower(), style.group(1) if style else None))

    cursor = 0
    unmatched = False

    def put_style(match: re.Match[str]) -> str:
        nonlocal cursor, unmatched
        name = match.group(1).lower()
        while cursor < len(styles) and styles[cursor][0] != name:
            cursor += 1
        if cursor >= len(styles):
            unmatched = True
            return match.group(0)
        style = styles[cursor][1]
        cursor += 1
        if style is None:
            return match.group(0)
        attrs = _STYLE_ATTR.sub("", match.group(2) or "")
        return f"<{match.group(1)}{attrs} style={style}{match.group(3)}>"

    kept = responsive_rules("\n".join(STYLE_BLOCK.findall(protected.text)))
    without_style_blocks = _STYLE_BLOCK_ELEMENT.sub("", protected.text)
    result = _START_TAG.sub(put_style, without_style_blocks)
    if unmatched:
        raise TemplateError("CSS inlining could not match the template's tags", field="html")
    if kept and not fragment:
        result = _put_style_block(result, kept)
    return _restore(result, protected.spans)


_HEAD_END = re.compile(r"</head\s*>", re.IGNORECASE)
_AT_MEDIA = re.compile(r"@media\b", re.IGNORECASE)


def responsive_rules(css: str) -> str:
    """The @media rules of a style sheet (a mobile breakpoint, dark mode), one per line.

    They cannot be inlined, so they are the one style block a message keeps; everything else
    is inlined and dropped.
    """
    rules: list[str] = []
    position = 0
    while (match := _AT_MEDIA.search(css, position)) is not None:
        opening = css.find("{", match.end())
        if opening < 0:
            break
        depth, index = 0, opening
        for index in range(opening, len(css)):
            depth += {"{": 1, "}": -1}.get(css[index], 0)
            if depth == 0:
                break
        if depth != 0:
            break  # unclosed: a browser drops it too
        rules.append(" ".join(css[match.start() : index + 1].split()))
        position = index + 1
    return "\n".join(rules)


def _put_style_block(html: str, css: str) -> str:
    block = f'<style type="text/css">\n{css}\n</style>'
    head_end = _HEAD_END.search(html)
    if head_end is None:
        return block + html
    return html[: head_end.start()] + block + html[head_end.start() :]


_TEXT_CONFIG = ParserConfig(display_links=True)


_TRAILING_SPACE = re.compile(r"[ \t\u00a0\u3000]+$", re.MULTILINE)
_BLANK_RUN = re.compile(r"\n{3,}")


def tidy_text(text: str) -> str:
    """No spaces at the ends of lines, at most one blank line in a row, one final newline."""
    # The converter pads table cells to their column's width: for a table-based email that was
    # three quarters of the text part, all of it spaces at the ends of lines.
    return _BLANK_RUN.sub("\n\n", _TRAILING_SPACE.sub("", text)).strip() + "\n"


def html_to_text(html: str) -> str:
    """Plain-text alternative of an HTML body; links stay visible as [label](url)."""
    return tidy_text(str(get_text(html, _TEXT_CONFIG)))


def text_template_from_html(source: str) -> str | None:
    """Convert an HTML template to a text template once, if every tag keeps its place."""
    protected = _protect(source, comments=False)
    text = str(get_text(protected.text, _TEXT_CONFIG))
    if not _kept_in_order(text, protected):
        return None
    return _restore(text, protected.spans)
