"""Block designs: validation of hostile JSON, rendering of every block and starter to email HTML."""

import json
import re

import html5lib
import pytest

from campaigns.content.previews import GMAIL_CLIP_BYTES, clip_marked, images_off
from campaigns.content.render import design_render
from campaigns.content.schema import (
    BLOCK_TYPES,
    MAX_BLOCKS,
    MAX_DESIGN_BYTES,
    DesignError,
    design_parse,
    design_validate,
)
from campaigns.content.starters import LANGUAGES, STARTER_SLUGS, starter_design
from mailkit.render import TemplateSource, compile_templates, contact_context, render_content

EVERY_BLOCK = [
    {"type": "heading", "text": "Hello {{ first_name | default('friend') }}", "level": 2},
    {"type": "text", "html": "<p>Some <b>bold</b>, <a href='https://example.com/a'>a link</a></p>"
                             "<ul><li>one</li><li>two</li></ul>"},
    {"type": "image", "src": "https://example.com/i.png", "alt": "A picture", "href": "https://example.com"},
    {"type": "button", "label": "Go", "href": "https://example.com/go",
     "style": {"background": "#b91c1c", "color": "#ffffff", "align": "left", "padding": [8, 8, 8, 8]}},
    {"type": "divider"},
    {"type": "spacer", "height": 30},
    {"type": "social", "links": [{"network": "github", "href": "https://github.com/x", "label": "GitHub"}]},
    {"type": "footer", "address": "1 Main St", "webview_label": "View online"},
    {"type": "html", "html": "<table><tr><td style='color:#333'>raw</td></tr></table>"},
]  # fmt: skip


def _design(blocks, **settings):
    return {
        "version": 1,
        "settings": {"preheader": "Preview line", **settings},
        "sections": [{"columns": [{"blocks": blocks[:5]}, {"blocks": blocks[5:]}]}],
    }


def _sent_html(design: dict, **attributes) -> tuple[str, str]:
    rendered = design_render(design=design_validate(design))
    compiled = compile_templates(
        TemplateSource(subject="s", html=rendered.html, text=rendered.text)
    )
    context = contact_context(email="a@example.org", name="", attributes=attributes,
                              extra={"unsubscribe_url": "https://x.test/u/t/", "webview_url": "https://x.test/v/t/"})  # fmt: skip
    content = render_content(compiled, context)
    return content.html, content.text


def _assert_email_safe(document: str) -> None:
    # A strict HTML5 parse: any parse error fails (html5lib raises on the first one).
    html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(document)
    assert len(document.encode()) < GMAIL_CLIP_BYTES
    outside_comments = re.sub(r"<!--.*?-->", "", document, flags=re.DOTALL)
    styles = re.findall(r"<style\b[^>]*>(.*?)</style>", outside_comments, flags=re.DOTALL)
    assert len(styles) == 1, "one style block"
    # Only @media rules in it: everything else is inlined.
    assert re.sub(r"@media[^{]*\{(?:[^{}]*\{[^{}]*\})*[^{}]*\}", "", styles[0]).strip() == ""
    assert "<link" not in outside_comments and "<script" not in document.lower()
    for image in re.findall(r"<img\b[^>]*>", document):
        assert re.search(r'\salt="[^"]+"', image), image


def test_every_block_renders_to_email_safe_html_and_a_clean_text_part():
    html, text = _sent_html(_design(EVERY_BLOCK))
    _assert_email_safe(html)
    assert "Hello friend" in html and "Preview line" in html
    assert 'href="https://x.test/u/t/"' in html and "View online" in html
    assert "@media only screen and (min-width:480px)" in html
    assert "prefers-color-scheme: dark" in html and 'name="color-scheme"' in html
    assert "Go: https://example.com/go" in text and "Unsubscribe: https://x.test/u/t/" in text
    assert all(line == line.rstrip() for line in text.splitlines())


@pytest.mark.parametrize("slug", STARTER_SLUGS)
@pytest.mark.parametrize("language", LANGUAGES)
def test_every_starter_renders_to_email_safe_html(slug, language):
    design = starter_design(
        slug=slug, language=language, image_base_url="https://cdn.example.com/s"
    )
    html, text = _sent_html(design)
    _assert_email_safe(html)
    assert ("退订" if language == "zh-Hans" else "Unsubscribe") in html
    assert text.strip() and "{{" not in text and "{{" not in html


def test_a_conditional_section_shows_only_to_matching_contacts():
    design = _design([])
    design["sections"] = [
        {"columns": [{"blocks": [{"type": "heading", "text": "For pros"}]}],
         "condition": {"field": "plan", "op": "equals", "value": "pro"}},
        {"columns": [{"blocks": [{"type": "heading", "text": "For all"}]}]},
    ]  # fmt: skip
    shown, text = _sent_html(design, plan="pro")
    hidden, hidden_text = _sent_html(design, plan="free")
    assert "For pros" in shown and "For pros" in text
    assert "For pros" not in hidden and "For pros" not in hidden_text and "For all" in hidden


@pytest.mark.parametrize(
    "html",
    [
        "<p onclick='x()'>x</p><script>alert(1)</script>",
        "<a href='javascript:alert(1)'>x</a>",
        "<img src=x onerror=alert(1)>",
        "<style>body{}</style><iframe src='https://evil'></iframe>",
        "<a href='data:text/html,<script>alert(1)</script>'>x</a>",
    ],
)
def test_hostile_text_and_raw_html_are_sanitized(html):
    for kind in ("text", "html"):
        block = design_validate(_design([{"type": kind, "html": html}]))["sections"][0]["columns"][
            0
        ]["blocks"][0]
        cleaned = block["html"].lower()
        for bad in ("onclick", "<script", "javascript:", "onerror", "<style", "<iframe", "data:"):
            assert bad not in cleaned


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "version"),
        ({"sections": [{"columns": []}]}, "at least one column"),
        ({"sections": [{"columns": [{}] * 5}]}, "at most 4"),
        ({"sections": [{"columns": [{"blocks": [{"type": "video"}]}]}]}, "must be one of"),
        ({"sections": [{"columns": [{"blocks": [{"type": "button", "label": "x", "href": "javascript:alert(1)"}]}]}]}, "http(s)"),
        ({"sections": [{"columns": [{"blocks": [{"type": "image", "src": "{{ evil }}"}]}]}]}, "http(s)"),
        ({"sections": [{"columns": [{"blocks": [{"type": "spacer", "height": 10**9}]}]}]}, "whole number"),
        ({"sections": [{"columns": [{"blocks": [{"type": "divider", "style": {"color": "red;x:y"}}]}]}]}, "colour"),
        ({"sections": [{"condition": {"field": "a }}{{ b"}, "columns": [{}]}]}, "attribute name"),
        ({"sections": [{"columns": [{"blocks": [{"type": "divider"}] * (MAX_BLOCKS + 1)}]}]}, "at most"),
    ],
)  # fmt: skip
def test_invalid_designs_are_refused_with_a_clear_message(change, message):
    with pytest.raises(DesignError, match=re.escape(message)):
        design_validate({"version": 1, "settings": {}, "sections": [], **change})


def test_oversized_or_deeply_nested_json_is_refused_before_parsing_work():
    with pytest.raises(DesignError, match="larger than"):
        design_parse(" " * (MAX_DESIGN_BYTES + 1))
    with pytest.raises(DesignError):
        design_parse("[" * 100_000 + "]" * 100_000)  # RecursionError becomes a DesignError
    with pytest.raises(DesignError, match="valid JSON"):
        design_parse("{nope")


def test_every_block_type_is_covered_here():
    assert {block["type"] for block in EVERY_BLOCK} == set(BLOCK_TYPES)


def test_the_clipping_line_and_images_off_preview():
    big = "<html><body>" + "<p>x</p>" * (GMAIL_CLIP_BYTES // 8 + 10) + "</body></html>"
    marked, clipped = clip_marked(big)
    assert clipped and marked.index('<div style="border-top:3px') <= GMAIL_CLIP_BYTES
    assert "102 KB" in marked
    assert clip_marked("<p>small</p>") == ("<p>small</p>", False)
    assert images_off('<img alt="A" src="https://x/y.png">') == '<img alt="A" src="">'


def test_a_design_round_trips_through_its_json():
    design = design_validate(_design(EVERY_BLOCK))
    assert design_validate(json.loads(json.dumps(design))) == design
