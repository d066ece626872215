"""Per-campaign template compilation and per-recipient rendering in a capped Jinja2 sandbox."""

from __future__ import annotations

import contextvars
import datetime as dt
import re
import string
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import css_inline
import jinja2
from inscriptis import get_text
from inscriptis.model.config import ParserConfig
from jinja2 import meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.compiler import optimizeconst as _optimizeconst
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment

from delivery.errors import TemplateError

__all__ = [
    "CompiledTemplates",
    "RenderLimits",
    "RenderedContent",
    "TemplateSource",
    "compile_templates",
    "contact_context",
    "render_content",
    "template_variables",
]

LAYOUT_NAME = "layout"


@dataclass(frozen=True)
class TemplateSource:
    subject: str
    html: str
    text: str = ""
    # Optional base layout with {% block content %}; the html may {% extends "layout" %}.
    layout: str = ""


@dataclass(frozen=True)
class RenderedContent:
    subject: str
    html: str
    text: str


@dataclass(frozen=True)
class RenderLimits:
    """Caps that keep one hostile or careless template from stalling a whole send."""

    max_part_chars: int = 1_000_000  # per rendered part (subject, html, text)
    max_seconds: float = 1.0  # wall clock per part
    max_iterations: int = 100_000  # loop items per part, all loops together
    max_range: int = 10_000  # items of one range()
    max_repeat: int = 10_000  # integer arguments that size a result (center, ljust, batch ...)
    max_subject_chars: int = 2_000


DEFAULT_LIMITS = RenderLimits()


# --------------------------------------------------------------------------------------------
# Budget: one per rendered part, reachable from filters and sandbox hooks through a ContextVar


class _Budget:
    __slots__ = ("deadline", "iterations", "limits")

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.max_seconds
        self.iterations = 0

    def tick(self, items: int = 0) -> None:
        self.iterations += items
        if self.iterations > self.limits.max_iterations:
            raise SecurityError(f"more than {self.limits.max_iterations} loop iterations")
        if time.monotonic() > self.deadline:
            raise SecurityError(f"rendering took longer than {self.limits.max_seconds}s")


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "skylark_render_budget", default=None
)


def _limits() -> RenderLimits:
    budget = _BUDGET.get()
    return budget.limits if budget is not None else DEFAULT_LIMITS


def _check_size(value: Any) -> Any:
    if isinstance(value, (str, list, tuple, bytes)) and len(value) > _limits().max_part_chars:
        raise SecurityError(f"a value longer than {_limits().max_part_chars} would be built")
    return value


def _check_repeat(*numbers: Any) -> None:
    cap = _limits().max_repeat
    for number in numbers:
        if isinstance(number, int) and abs(number) > cap:
            raise SecurityError(f"size argument {number} exceeds {cap}")


def _guard_iter(value: Any) -> Any:
    """Wrapped around every {% for %} iterable at compile time (see _SkylarkEnvironment)."""
    budget = _BUDGET.get()
    if budget is None or isinstance(value, jinja2.Undefined):
        return value
    return _counted(value, budget)


def _counted(iterable: Iterable[Any], budget: _Budget) -> Iterator[Any]:
    count = 0
    for item in iterable:
        count += 1
        if count & 63 == 0:
            budget.tick(64)
        yield item
    budget.tick(count & 63)


def _safe_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > _limits().max_range:
        raise SecurityError(f"range() of more than {_limits().max_range} items")
    return rng


# --------------------------------------------------------------------------------------------
# Lenient undefined: a contact without a value never breaks a send


class LenientUndefined(jinja2.ChainableUndefined):
    """Renders empty, chains attribute access, compares false, absorbs arithmetic."""

    __slots__ = ()

    def _absorb(self, *args: Any, **kwargs: Any) -> LenientUndefined:
        return self

    __add__ = __radd__ = __sub__ = __rsub__ = _absorb
    __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _absorb
    __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = _absorb
    __pos__ = __neg__ = __call__ = _absorb

    def _false(self, other: Any) -> bool:
        return False

    __lt__ = __le__ = __gt__ = __ge__ = _false

    def __int__(self) -> int:
        return 0

    def __float__(self) -> float:
        return 0.0

    __hash__ = jinja2.ChainableUndefined.__hash__


# --------------------------------------------------------------------------------------------
# Filters marketers need


def _to_datetime(value: Any) -> dt.datetime | dt.date | None:
    if isinstance(value, (dt.datetime, dt.date)):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value, tz=dt.UTC)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            return dt.datetime.fromisoformat(text)
        except ValueError:
            return None
    return None


def _zone(name: Any) -> ZoneInfo | None:
    if not name or not isinstance(name, str):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        # A bad time zone in one contact's attributes must not break the send: fall back to UTC.
        return None


def filter_date(value: Any, format: str = "%Y-%m-%d", tz: Any = None) -> str:
    """Format a datetime, date, ISO string or Unix timestamp; naive values are taken as UTC."""
    if isinstance(value, jinja2.Undefined) or value is None or value == "":
        return ""
    moment = _to_datetime(value)
    if moment is None:
        return str(value)
    if isinstance(moment, dt.datetime):
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        zone = _zone(tz)
        if zone is not None:
            moment = moment.astimezone(zone)
        elif tz:
            moment = moment.astimezone(dt.UTC)
    if not isinstance(format, str) or len(format) > 200:
        raise SecurityError("date format must be a short string")
    return moment.strftime(format)


def filter_datetime(value: Any, format: str = "%Y-%m-%d %H:%M", tz: Any = None) -> str:
    return filter_date(value, format, tz=tz)


def filter_number(
    value: Any, decimals: int = 0, thousands: str = ",", decimal_point: str = "."
) -> str:
    """1234567.891 | number(2) -> "1,234,567.89"; non-numbers are returned unchanged."""
    if isinstance(value, jinja2.Undefined) or value is None:
        return ""
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return str(value)
    if not number.is_finite():
        return str(value)
    decimals = max(0, min(int(decimals), 20))
    text = f"{number:,.{decimals}f}"
    return (
        text.translate({ord(","): "\0", ord("."): "\1"})
        .replace("\0", str(thousands)[:4])
        .replace("\1", str(decimal_point)[:4])
    )


def _capped_filter(original: Any, *, size_args: int = 1) -> Any:
    """Reject integer size arguments above max_repeat before the builtin allocates."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # Filters that take the eval context / environment get it as the first argument.
        _check_repeat(*args[1:], *kwargs.values())
        return _check_size(original(*args, **kwargs))

    for attr in ("jinja_pass_arg",):
        if hasattr(original, attr):
            setattr(wrapper, attr, getattr(original, attr))
    wrapper.__name__ = getattr(original, "__name__", "filter")
    return wrapper


def _filter_replace_guard(original: Any) -> Any:
    def wrapper(eval_ctx: Any, s: Any, old: Any, new: Any, count: int | None = None) -> Any:
        text, old_s, new_s = str(s), str(old), str(new)
        occurrences = (len(text) + 1) if old_s == "" else text.count(old_s)
        if count is not None and count >= 0:
            occurrences = min(occurrences, count)
        if len(text) + occurrences * max(0, len(new_s) - len(old_s)) > _limits().max_part_chars:
            raise SecurityError("replace() would build a value that is too long")
        return original(eval_ctx, s, old, new, count)

    wrapper.jinja_pass_arg = original.jinja_pass_arg  # type: ignore[attr-defined]
    return wrapper


def _filter_join_guard(original: Any) -> Any:
    def wrapper(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> Any:
        items = list(value) if not isinstance(value, jinja2.Undefined) else []
        if len(items) * len(str(d)) > _limits().max_part_chars:
            raise SecurityError("join() would build a value that is too long")
        return _check_size(original(eval_ctx, items, d, attribute))

    wrapper.jinja_pass_arg = original.jinja_pass_arg  # type: ignore[attr-defined]
    return wrapper


# --------------------------------------------------------------------------------------------
# The sandbox


class _SkylarkCodeGenerator(CodeGenerator):
    """Routes ``~`` through the environment so a doubling loop cannot build gigabytes."""

    @_optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked_concat(context, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


_FORMAT_NUMBER = re.compile(r"(\d+)")
_PERCENT_SPEC = re.compile(r"%[^a-zA-Z%]*[a-zA-Z%]")
_STR_SIZE_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def _check_format_spec(spec: str) -> None:
    if "*" in spec or "{" in spec:
        raise SecurityError("computed widths are not allowed in format strings")
    _check_repeat(*(int(n) for n in _FORMAT_NUMBER.findall(spec)))


class _SkylarkEnvironment(ImmutableSandboxedEnvironment):
    code_generator_class = _SkylarkCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%", "//"})

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        if operator == "**":
            if isinstance(right, int) and isinstance(left, int):
                if abs(right) > 1024 or max(left.bit_length(), 1) * abs(right) > 100_000:
                    raise SecurityError("exponent too large")
        elif operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
                    if len(seq) * times > _limits().max_part_chars:
                        raise SecurityError("repetition would build a value that is too long")
        elif operator == "+":
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                if len(left) + len(right) > _limits().max_part_chars:
                    raise SecurityError("concatenation would build a value that is too long")
        elif operator == "%" and isinstance(left, str):
            for spec in _PERCENT_SPEC.findall(left):
                _check_format_spec(spec)
        return self.binop_table[operator](left, right)

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        # Louder than the default undefined: probing internals is an error the pre-flight shows.
        raise SecurityError(f"access to attribute {attribute!r} is not allowed")

    def checked_concat(self, context: jinja2.runtime.Context, parts: tuple[Any, ...]) -> str:
        join = markup_join if context.eval_ctx.autoescape else str_join
        return _check_size(join(parts))

    def concat(self, parts: Iterable[Any]) -> str:  # type: ignore[override]
        # Every block, macro and call-block body is joined here.
        items = parts if isinstance(parts, list) else list(parts)
        total = 0
        cap = _limits().max_part_chars
        for item in items:
            total += len(item)
            if total > cap:
                raise SecurityError(f"output longer than {cap} characters")
        return "".join(items)

    def wrap_str_format(self, value: Any) -> Any:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        for _literal, field_name, spec, _conv in string.Formatter().parse(str(value.__self__)):
            if field_name is not None and spec:
                _check_format_spec(spec)
        return wrapper

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget = _BUDGET.get()
        if budget is not None:
            budget.tick()
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str):
            if name in _STR_SIZE_METHODS:
                _check_repeat(*args, *kwargs.values())
            elif name == "replace" and len(args) >= 2:
                text, old, new = owner, str(args[0]), str(args[1])
                hits = (len(text) + 1) if old == "" else text.count(old)
                if len(text) + hits * max(0, len(new) - len(old)) > _limits().max_part_chars:
                    raise SecurityError("replace() would build a value that is too long")
            elif name == "join" and args:
                items = list(args[0])
                if len(items) * len(owner) > _limits().max_part_chars:
                    raise SecurityError("join() would build a value that is too long")
                args = (items, *args[1:])
        return _check_size(super().call(__context, __obj, *args, **kwargs))

    def _generate(self, source: nodes.Template, *args: Any, **kwargs: Any) -> Any:
        # Every loop iterable goes through the budget (time and total iterations).
        for loop in source.find_all(nodes.For):
            loop.iter = nodes.Filter(
                loop.iter, "_skylark_guard_iter", [], [], None, None, lineno=loop.lineno
            )
        return super()._generate(source, *args, **kwargs)


def _finalize_output(value: Any) -> Any:
    return "" if value is None else value


def _make_environment(
    *, autoescape: bool, loader: jinja2.BaseLoader | None = None
) -> _SkylarkEnvironment:
    env = _SkylarkEnvironment(
        autoescape=autoescape,
        undefined=LenientUndefined,
        loader=loader,
        finalize=_finalize_output,
        auto_reload=False,
        cache_size=0,
        keep_trailing_newline=True,
    )
    # Deliberate globals: range is capped; lipsum (CPU/size) and cycler/joiner (objects with
    # internals) go; namespace stays because {% set ns.x %} is the only way to accumulate in
    # loops and its writes are size-checked like everything else.
    env.globals = {"range": _safe_range, "namespace": jinja2.utils.Namespace}
    filters = env.filters
    for name in ("center", "indent", "wordwrap", "batch", "slice", "format", "truncate"):
        filters[name] = _capped_filter(filters[name])
    filters["replace"] = _filter_replace_guard(filters["replace"])
    filters["join"] = _filter_join_guard(filters["join"])
    filters.pop("pprint", None)  # repr of arbitrary objects
    filters["date"] = filter_date
    filters["datetime"] = filter_datetime
    filters["number"] = filter_number
    filters["_skylark_guard_iter"] = _guard_iter
    return env


# --------------------------------------------------------------------------------------------
# CSS inlining and HTML-to-text with Jinja spans protected

_JINJA_SPAN = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_STYLE_BLOCK = re.compile(r"<style\b[^>]*>(.*?)</style\s*>", re.DOTALL | re.IGNORECASE)
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


def _inline_css(source: str, *, extra_css: str = "", fragment: bool = False) -> str:
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

    without_style_blocks = _STYLE_BLOCK_ELEMENT.sub("", protected.text)
    result = _START_TAG.sub(put_style, without_style_blocks)
    if unmatched:
        raise TemplateError("CSS inlining could not match the template's tags", field="html")
    return _restore(result, protected.spans)


_TEXT_CONFIG = ParserConfig(display_links=True)


def html_to_text(html: str) -> str:
    """Plain-text alternative of an HTML body; links stay visible as [label](url)."""
    return get_text(html, _TEXT_CONFIG).strip() + "\n"


def _text_template_from_html(source: str) -> str | None:
    """Convert an HTML template to a text template once, if every tag keeps its place."""
    protected = _protect(source, comments=False)
    text = get_text(protected.text, _TEXT_CONFIG)
    if not _kept_in_order(text, protected):
        return None
    return _restore(text, protected.spans)


# --------------------------------------------------------------------------------------------
# Compile once per campaign, render per recipient


@dataclass(frozen=True)
class CompiledTemplates:
    subject: jinja2.Template
    html: jinja2.Template
    text: jinja2.Template | None  # None: the text part is derived from each rendered html
    limits: RenderLimits
    text_from_html: bool


def _compile(env: _SkylarkEnvironment, source: str, field_name: str) -> jinja2.Template:
    try:
        return env.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(exc.message or str(exc), field=field_name, line=exc.lineno) from exc
    except SecurityError as exc:
        raise TemplateError(str(exc), field=field_name) from exc


def compile_templates(
    source: TemplateSource, *, inline_css: bool = True, limits: RenderLimits = DEFAULT_LIMITS
) -> CompiledTemplates:
    """Compile subject, html and text once per campaign; CSS is inlined here, not per recipient."""
    html_source, layout_source = source.html, source.layout
    # Syntax errors are reported against the marketer's source, before any inlining.
    _syntax_check(source)
    if inline_css:
        if layout_source:
            layout_css = "\n".join(_STYLE_BLOCK.findall(layout_source))
            layout_source = _inline_css(layout_source)
            # The child holds blocks only: inline it as a fragment with the layout's CSS.
            html_source = _inline_css(html_source, extra_css=layout_css, fragment=True)
        else:
            html_source = _inline_css(html_source)

    html_loader = jinja2.DictLoader({LAYOUT_NAME: layout_source}) if layout_source else None
    html_env = _make_environment(autoescape=True, loader=html_loader)
    text_env_loader = None
    text_template: jinja2.Template | None = None
    text_from_html = False
    if source.text.strip():
        text_template = _compile(_make_environment(autoescape=False), source.text, "text")
    else:
        text_from_html = True
        converted = _text_template_from_html(html_source)
        converted_layout = _text_template_from_html(layout_source) if layout_source else ""
        if converted is not None and converted_layout is not None:
            if layout_source:
                text_env_loader = jinja2.DictLoader({LAYOUT_NAME: converted_layout})
            try:
                text_template = _make_environment(
                    autoescape=False, loader=text_env_loader
                ).from_string(converted)
            except TemplateSyntaxError:
                text_template = None  # fall back to converting each rendered html
    return CompiledTemplates(
        subject=_compile(_make_environment(autoescape=False), source.subject, "subject"),
        html=_compile(html_env, html_source, "html"),
        text=text_template,
        limits=limits,
        text_from_html=text_from_html,
    )


def _syntax_check(source: TemplateSource) -> None:
    env = _make_environment(autoescape=True)
    for field_name, text in (
        ("subject", source.subject),
        ("html", source.html),
        ("text", source.text),
        ("layout", source.layout),
    ):
        try:
            env.parse(text)
        except TemplateSyntaxError as exc:
            raise TemplateError(exc.message or str(exc), field=field_name, line=exc.lineno) from exc


def _render_part(
    template: jinja2.Template, context: Mapping[str, Any], limits: RenderLimits, field_name: str
) -> str:
    budget = _Budget(limits)
    token = _BUDGET.set(budget)
    try:
        chunks: list[str] = []
        total = 0
        for chunk in template.root_render_func(template.new_context(dict(context))):
            total += len(chunk)
            if total > limits.max_part_chars:
                raise SecurityError(f"output longer than {limits.max_part_chars} characters")
            chunks.append(chunk)
            if len(chunks) & 255 == 0:
                budget.tick()
        return "".join(chunks)
    except TemplateError:
        raise
    except SecurityError as exc:
        raise TemplateError(
            f"unsafe template: {exc}", field=field_name, line=_template_line(exc)
        ) from exc
    except RecursionError as exc:
        raise TemplateError("template recursion too deep", field=field_name) from exc
    except MemoryError as exc:
        raise TemplateError("template used too much memory", field=field_name) from exc
    except Exception as exc:  # noqa: BLE001 - any error raised by template code is a template error
        raise TemplateError(
            f"{type(exc).__name__}: {exc}", field=field_name, line=_template_line(exc)
        ) from exc
    finally:
        _BUDGET.reset(token)


def _template_line(exc: BaseException) -> int | None:
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            debug_info = tb.tb_frame.f_globals.get("debug_info", "")
            line = _map_line(debug_info, tb.tb_lineno)
        tb = tb.tb_next
    return line


def _map_line(debug_info: str, code_line: int) -> int | None:
    best = None
    for pair in debug_info.split("&") if debug_info else ():
        template_line, _, python_line = pair.partition("=")
        if python_line and int(python_line) <= code_line:
            best = int(template_line)
    return best


def render_content(compiled: CompiledTemplates, context: Mapping[str, Any]) -> RenderedContent:
    """Render one recipient's subject, html and text; raises TemplateError, never hangs."""
    limits = compiled.limits
    subject = _render_part(compiled.subject, context, limits, "subject")
    # Subjects are one line: collapse any whitespace runs a template or value put there.
    subject = " ".join(subject.split())[: limits.max_subject_chars]
    html = _render_part(compiled.html, context, limits, "html")
    if compiled.text is not None:
        text = _render_part(compiled.text, context, limits, "text")
        if compiled.text_from_html:
            text = _tidy_text(text)
    else:
        text = html_to_text(html)
    return RenderedContent(subject=subject, html=html, text=text)


_BLANK_RUN = re.compile(r"\n[ \t]*(?:\n[ \t]*){2,}")


def _tidy_text(text: str) -> str:
    return _BLANK_RUN.sub("\n\n", text).strip() + "\n"


def contact_context(
    *,
    email: str,
    name: str,
    attributes: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What templates see: attributes at top level, then email/name/first_name, then extra."""
    name = name or ""
    first_name = name.split()[0] if name.split() else ""
    context: dict[str, Any] = {
        key: value
        for key, value in attributes.items()
        if isinstance(key, str) and key.isidentifier()
    }
    context.update(email=email, name=name, first_name=first_name)
    context["contact"] = {**attributes, "email": email, "name": name, "first_name": first_name}
    if extra:
        context.update(extra)
    return context


def template_variables(source: TemplateSource) -> set[str]:
    """Undeclared variables of every part, for the pre-flight check against contact fields."""
    env = _make_environment(autoescape=True)
    found: set[str] = set()
    for field_name, text in (
        ("subject", source.subject),
        ("html", source.html),
        ("text", source.text),
        ("layout", source.layout),
    ):
        if not text:
            continue
        try:
            found |= meta.find_undeclared_variables(env.parse(text))
        except TemplateSyntaxError as exc:
            raise TemplateError(exc.message or str(exc), field=field_name, line=exc.lineno) from exc
    return found - set(env.globals)
