"""Compile a campaign's templates once, render them per recipient under the budget."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import jinja2
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError

from mailkit.errors import TemplateError
from mailkit.i18n import gettext as _
from mailkit.render.html import (
    STYLE_BLOCK,
    html_to_text,
    inline_css,
    text_template_from_html,
    tidy_text,
)
from mailkit.render.limits import DEFAULT_LIMITS, RenderLimits, budget_scope
from mailkit.render.sandbox import SkylarkEnvironment, make_environment

__all__ = [
    "CompiledTemplates",
    "RenderedContent",
    "TemplateSource",
    "compile_templates",
    "contact_context",
    "render_content",
    "template_variables",
]

LAYOUT_NAME = "layout"
_T = TypeVar("_T")


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
class CompiledTemplates:
    subject: jinja2.Template
    html: jinja2.Template
    text: jinja2.Template | None  # None: the text part is derived from each rendered html
    limits: RenderLimits
    text_from_html: bool


def _too_nested(field_name: str) -> TemplateError:
    return TemplateError(
        _(
            "The template is nested too deeply to compile "
            "(parentheses, blocks, conditions or a long chain of operators)."
        ),
        field=field_name,
    )


def _guarded(step: Callable[[], _T], field_name: str) -> _T:
    """Run a parse or compile step; whatever it raises becomes a TemplateError of the field.

    Jinja's parser and code generator recurse per nesting level, and Python's compiler has
    fixed limits (20 nested loops, 100 indentation levels, 200 parentheses): a deeply nested
    template fails with RecursionError, SyntaxError or MemoryError, which must not reach the
    caller as a crash.
    """
    try:
        return step()
    except TemplateSyntaxError as exc:
        raise TemplateError(exc.message or str(exc), field=field_name, line=exc.lineno) from exc
    except SecurityError as exc:
        raise TemplateError(str(exc), field=field_name) from exc
    except (RecursionError, SyntaxError, MemoryError) as exc:
        raise _too_nested(field_name) from exc


def _compile(env: SkylarkEnvironment, source: str, field_name: str) -> jinja2.Template:
    return _guarded(lambda: env.from_string(source), field_name)


def compile_templates(
    source: TemplateSource, *, inline_css: bool = True, limits: RenderLimits = DEFAULT_LIMITS
) -> CompiledTemplates:
    """Compile subject, html and text once per campaign; CSS is inlined here, not per recipient."""
    for field_name, text in _parts(source):
        if len(text) > limits.max_source_chars:
            raise TemplateError(
                _("The template is longer than %(limit)s characters.")
                % {"limit": limits.max_source_chars},
                field=field_name,
            )
        if text.count("{{") + text.count("{%") > limits.max_source_tags:
            raise TemplateError(
                _("The template has more than %(limit)s tags.") % {"limit": limits.max_source_tags},
                field=field_name,
            )
    html_source, layout_source = source.html, source.layout
    # Syntax errors are reported against the marketer's source, before any inlining.
    _syntax_check(source)
    if inline_css:
        html_source, layout_source = _inlined(html_source, layout_source)

    html_loader = jinja2.DictLoader({LAYOUT_NAME: layout_source}) if layout_source else None
    html_env = make_environment(autoescape=True, loader=html_loader)
    text_template: jinja2.Template | None = None
    text_from_html = False
    if source.text.strip():
        text_template = _compile(make_environment(autoescape=False), source.text, "text")
    else:
        text_from_html = True
        text_template = _text_template(html_source, layout_source)
    return CompiledTemplates(
        subject=_compile(make_environment(autoescape=False), source.subject, "subject"),
        html=_compile(html_env, html_source, "html"),
        text=text_template,
        limits=limits,
        text_from_html=text_from_html,
    )


def _inlined(html_source: str, layout_source: str) -> tuple[str, str]:
    if not layout_source:
        return inline_css(html_source), layout_source
    layout_css = "\n".join(STYLE_BLOCK.findall(layout_source))
    # The child holds blocks only: inline it as a fragment with the layout's CSS.
    return inline_css(html_source, extra_css=layout_css, fragment=True), inline_css(layout_source)


def _text_template(html_source: str, layout_source: str) -> jinja2.Template | None:
    """The text part's template converted from the html once, or None to convert per message."""
    converted = text_template_from_html(html_source)
    converted_layout = text_template_from_html(layout_source) if layout_source else ""
    if converted is None or converted_layout is None:
        return None
    loader = jinja2.DictLoader({LAYOUT_NAME: converted_layout}) if layout_source else None
    try:
        return make_environment(autoescape=False, loader=loader).from_string(converted)
    except (TemplateSyntaxError, RecursionError, SyntaxError, MemoryError):
        return None  # fall back to converting each rendered html


def _parts(source: TemplateSource) -> tuple[tuple[str, str], ...]:
    return (
        ("subject", source.subject),
        ("html", source.html),
        ("text", source.text),
        ("layout", source.layout),
    )


def _syntax_check(source: TemplateSource) -> None:
    env = make_environment(autoescape=True)
    for field_name, text in _parts(source):
        _guarded(functools.partial(env.parse, text), field_name)


def _render_part(
    template: jinja2.Template, context: Mapping[str, Any], limits: RenderLimits, field_name: str
) -> str:
    with budget_scope(limits) as budget:
        try:
            chunks: list[str] = []
            total = 0
            for chunk in template.root_render_func(template.new_context(dict(context))):
                total += len(chunk)
                if total > limits.max_part_chars:
                    raise SecurityError(
                        _("The rendered text is longer than %(limit)s characters.")
                        % {"limit": limits.max_part_chars}
                    )
                chunks.append(chunk)
                budget.tick()
            return "".join(chunks)
        except TemplateError:
            raise
        except SecurityError as exc:
            raise TemplateError(str(exc), field=field_name, line=_template_line(exc)) from exc
        except RecursionError as exc:
            raise TemplateError(_("The template recurses too deeply."), field=field_name) from exc
        except MemoryError as exc:
            raise TemplateError(_("The template used too much memory."), field=field_name) from exc
        except Exception as exc:  # noqa: BLE001 - any error raised by template code is a template error
            raise TemplateError(
                f"{type(exc).__name__}: {exc}", field=field_name, line=_template_line(exc)
            ) from exc


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
        template_line, _sep, python_line = pair.partition("=")
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
            text = tidy_text(text)
    else:
        if len(html) > limits.max_html_to_text_chars:
            raise TemplateError(
                _(
                    "The HTML part is longer than %(limit)s characters and its text part cannot "
                    "be derived from it: write a text part."
                )
                % {"limit": limits.max_html_to_text_chars},
                field="text",
            )
        text = html_to_text(html)
    return RenderedContent(subject=subject, html=html, text=text)


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
    env = make_environment(autoescape=True)
    found: set[str] = set()
    for field_name, text in _parts(source):
        if not text:
            continue
        tree: nodes.Template = _guarded(functools.partial(env.parse, text), field_name)
        found |= _guarded(functools.partial(meta.find_undeclared_variables, tree), field_name)
    return found - set(env.globals)
