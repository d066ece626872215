"""The block design: its JSON schema (version 1), validated and normalized before anything
renders it. The JSON comes from a browser: every size is bounded, every value checked, every
text sanitized (campaigns.content.sanitize says what passes)."""

from __future__ import annotations

import json
import re
from typing import Any

from django.utils.translation import gettext as _

from campaigns.content.sanitize import (
    plain_text_clean,
    raw_html_clean,
    text_html_clean,
    url_allowed,
)
from campaigns.errors import CampaignError

SCHEMA_VERSION = 1
MAX_DESIGN_BYTES = 512 * 1024
MAX_SECTIONS = 40
MAX_COLUMNS = 4
MAX_BLOCKS = 150  # in the whole design
MAX_TEXT_HTML = 20_000
MAX_RAW_HTML = 50_000
MAX_LINE = 500
BLOCK_TYPES = (
    "heading", "text", "image", "button", "divider", "spacer", "social", "footer", "html",
)  # fmt: skip
SOCIAL_NETWORKS = (
    "facebook", "x", "instagram", "linkedin", "youtube", "github", "weibo", "wechat",
    "douyin", "web",
)  # fmt: skip
# Fonts with fallbacks: what every mail client can show, CJK stacks included.
FONTS = {
    "sans": "Helvetica, Arial, 'PingFang SC', 'Microsoft YaHei', sans-serif",
    "serif": "Georgia, 'Times New Roman', 'Songti SC', SimSun, serif",
    "mono": "'Courier New', Courier, monospace",
    "rounded": "'Trebuchet MS', Verdana, 'PingFang SC', 'Microsoft YaHei', sans-serif",
}
_COLOUR = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
CONDITION_OPS = ("equals", "not_equals", "is_set", "is_not_set")

_BLOCK_DEFAULTS: dict[str, dict[str, Any]] = {
    "heading": {"text": "", "level": 1},
    "text": {"html": ""},
    "image": {"src": "", "alt": "", "href": "", "width": 0},
    "button": {"label": "", "href": ""},
    "divider": {},
    "spacer": {"height": 24},
    "social": {"links": []},
    "footer": {"address": "", "unsubscribe_label": "", "webview_label": ""},
    "html": {"html": ""},
}
_STYLE_DEFAULTS: dict[str, Any] = {
    "color": "",
    "background": "",
    "font": "",
    "font_size": 0,
    "align": "",
    "padding": [],
}


class DesignError(CampaignError):
    """The design is not valid: the message says where and why."""


def design_parse(raw: str | bytes) -> dict:
    """The browser's JSON text, bounded, parsed and validated."""
    if len(raw) > MAX_DESIGN_BYTES:
        raise DesignError(
            _("The design is larger than %(limit)s KB.") % {"limit": MAX_DESIGN_BYTES // 1024}
        )
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise DesignError(_("The design is not valid JSON.")) from exc
    return design_validate(data)


def design_validate(data: Any) -> dict:
    """A normalized copy of the design: defaults filled in, texts sanitized, unknown keys
    dropped; DesignError names the first problem."""
    if not isinstance(data, dict):
        raise DesignError(_("The design must be an object."))
    if data.get("version") != SCHEMA_VERSION:
        raise DesignError(
            _("Unknown design version %(version)s (expected %(expected)s).")
            % {"version": str(data.get("version"))[:20], "expected": SCHEMA_VERSION}
        )
    settings = _settings(_object(data.get("settings", {}), "settings"))
    sections_in = _list(data.get("sections", []), "sections", MAX_SECTIONS)
    counter = [0]
    sections = [_section(section, index, counter) for index, section in enumerate(sections_in)]
    return {"version": SCHEMA_VERSION, "settings": settings, "sections": sections}


def _fail(where: str, problem: str) -> DesignError:
    return DesignError(_("%(where)s: %(problem)s") % {"where": where, "problem": problem})


def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise _fail(where, _("must be an object"))
    return value


def _list(value: Any, where: str, limit: int) -> list:
    if not isinstance(value, list):
        raise _fail(where, _("must be a list"))
    if len(value) > limit:
        raise _fail(where, _("at most %(limit)s items") % {"limit": limit})
    return value


def _text(value: Any, where: str, limit: int = MAX_LINE) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _fail(where, _("must be text"))
    if len(value) > limit:
        raise _fail(where, _("at most %(limit)s characters") % {"limit": limit})
    return value


def _integer(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(
            where, _("must be a whole number from %(low)s to %(high)s") % {"low": low, "high": high}
        )
    return value


def _colour(value: Any, where: str) -> str:
    value = _text(value, where, 7)
    if value and not _COLOUR.match(value):
        raise _fail(where, _("must be a colour like #1a2b3c"))
    return value.lower()


def _choice(value: Any, where: str, choices: tuple[str, ...] | dict, default: str = "") -> str:
    value = _text(value, where, 40) or default
    if value and value not in choices:
        raise _fail(where, _("must be one of %(choices)s") % {"choices": ", ".join(choices)})
    return value


def _url(value: Any, where: str, *, required: bool = False) -> str:
    value = _text(value, where, 2000).strip()
    if not value:
        if required:
            raise _fail(where, _("a link is required"))
        return ""
    if not url_allowed(value):
        raise _fail(where, _("links must be http(s) or mailto URLs"))
    return value


def _settings(raw: dict) -> dict:
    return {
        "preheader": plain_text_clean(_text(raw.get("preheader"), "settings.preheader", 300)),
        "width": _integer(raw.get("width", 600), "settings.width", 480, 800),
        "breakpoint": _integer(raw.get("breakpoint", 480), "settings.breakpoint", 320, 768),
        "background": _colour(raw.get("background", "#f4f4f5"), "settings.background"),
        "content_background": _colour(
            raw.get("content_background", "#ffffff"), "settings.content_background"
        ),
        "text_color": _colour(raw.get("text_color", "#1f2937"), "settings.text_color"),
        "link_color": _colour(raw.get("link_color", "#2563eb"), "settings.link_color"),
        "font": _choice(raw.get("font"), "settings.font", FONTS, "sans"),
        "dark_mode": bool(raw.get("dark_mode", True)),
        "lang": _choice(raw.get("lang"), "settings.lang", ("en", "zh-Hans"), "en"),
    }


def _style(raw: Any, where: str) -> dict:
    raw = _object(raw if raw is not None else {}, where)
    padding = _list(raw.get("padding", []), f"{where}.padding", 4)
    if padding and len(padding) != 4:
        raise _fail(f"{where}.padding", _("four numbers: top, right, bottom, left"))
    return {
        "color": _colour(raw.get("color"), f"{where}.color"),
        "background": _colour(raw.get("background"), f"{where}.background"),
        "font": _choice(raw.get("font"), f"{where}.font", FONTS),
        "font_size": _integer(raw.get("font_size", 0), f"{where}.font_size", 0, 72),
        "align": _choice(raw.get("align"), f"{where}.align", ("left", "center", "right")),
        "padding": [_integer(p, f"{where}.padding", 0, 120) for p in padding],
    }


def _condition(raw: Any, where: str) -> dict | None:
    if raw in (None, {}):
        return None
    raw = _object(raw, where)
    field = _text(raw.get("field"), f"{where}.field", 64)
    if not _IDENTIFIER.match(field):
        raise _fail(f"{where}.field", _("must be a contact field or attribute name"))
    op = _choice(raw.get("op"), f"{where}.op", CONDITION_OPS, "equals")
    return {"field": field, "op": op, "value": _text(raw.get("value"), f"{where}.value", 200)}


def _section(raw: Any, index: int, counter: list[int]) -> dict:
    where = f"sections[{index}]"
    raw = _object(raw, where)
    columns = _list(raw.get("columns", []), f"{where}.columns", MAX_COLUMNS)
    if not columns:
        raise _fail(f"{where}.columns", _("a section needs at least one column"))
    widths = [c.get("width", 0) if isinstance(c, dict) else 0 for c in columns]
    return {
        "background": _colour(raw.get("background"), f"{where}.background"),
        "padding": _style({"padding": raw.get("padding", [])}, where)["padding"],
        "condition": _condition(raw.get("condition"), f"{where}.condition"),
        "columns": [
            _column(column, f"{where}.columns[{i}]", counter, widths)
            for i, column in enumerate(columns)
        ],
    }


def _column(raw: Any, where: str, counter: list[int], widths: list) -> dict:
    raw = _object(raw, where)
    width = raw.get("width", 0)
    width = _integer(width, f"{where}.width", 0, 100)
    if sum(w for w in widths if isinstance(w, int) and not isinstance(w, bool)) > 100:
        raise _fail(where, _("the columns' widths add up to more than 100%"))
    blocks = _list(raw.get("blocks", []), f"{where}.blocks", MAX_BLOCKS)
    counter[0] += len(blocks)
    if counter[0] > MAX_BLOCKS:
        raise _fail(where, _("a design holds at most %(limit)s blocks") % {"limit": MAX_BLOCKS})
    return {
        "width": width,
        "blocks": [_block(block, f"{where}.blocks[{i}]") for i, block in enumerate(blocks)],
    }


def _block(raw: Any, where: str) -> dict:
    raw = _object(raw, where)
    kind = _choice(raw.get("type"), f"{where}.type", BLOCK_TYPES)
    if not kind:
        raise _fail(f"{where}.type", _("a block needs a type"))
    block: dict[str, Any] = {"type": kind, "style": _style(raw.get("style"), f"{where}.style")}
    block.update(_block_fields(kind, {**_BLOCK_DEFAULTS[kind], **raw}, where))
    return block


def _block_fields(kind: str, raw: dict, where: str) -> dict:
    if kind == "heading":
        return {
            "text": plain_text_clean(_text(raw["text"], f"{where}.text")),
            "level": _integer(raw["level"], f"{where}.level", 1, 3),
        }
    if kind == "text":
        return {"html": text_html_clean(_text(raw["html"], f"{where}.html", MAX_TEXT_HTML))}
    if kind == "html":
        return {"html": raw_html_clean(_text(raw["html"], f"{where}.html", MAX_RAW_HTML))}
    if kind == "image":
        return {
            "src": _url(raw["src"], f"{where}.src", required=True),
            "alt": plain_text_clean(_text(raw["alt"], f"{where}.alt")),
            "href": _url(raw["href"], f"{where}.href"),
            "width": _integer(raw["width"], f"{where}.width", 0, 800),
        }
    if kind == "button":
        return {
            "label": plain_text_clean(_text(raw["label"], f"{where}.label", 100)),
            "href": _url(raw["href"], f"{where}.href", required=True),
        }
    if kind == "spacer":
        return {"height": _integer(raw["height"], f"{where}.height", 4, 200)}
    if kind == "social":
        links = _list(raw["links"], f"{where}.links", 12)
        return {
            "links": [
                {
                    "network": _choice(
                        _object(link, f"{where}.links[{i}]").get("network"),
                        f"{where}.links[{i}].network",
                        SOCIAL_NETWORKS,
                        "web",
                    ),
                    "href": _url(link.get("href"), f"{where}.links[{i}].href", required=True),
                    "label": plain_text_clean(
                        _text(link.get("label"), f"{where}.links[{i}].label", 60)
                    ),
                }
                for i, link in enumerate(links)
            ]
        }
    if kind == "footer":
        return {
            "address": plain_text_clean(_text(raw["address"], f"{where}.address")),
            "unsubscribe_label": plain_text_clean(
                _text(raw["unsubscribe_label"], f"{where}.unsubscribe_label", 100)
            ),
            "webview_label": plain_text_clean(
                _text(raw["webview_label"], f"{where}.webview_label", 100)
            ),
        }
    return {}  # divider: its style is all it has
