"""Number formatting for the report and dashboard templates."""

from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def num(value: object) -> str:
    """12345 -> "12,345"."""
    try:
        return f"{int(value):,}"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""


@register.filter
def percent(value: object) -> str:
    """0.0123 -> "1.23%"; small rates keep two decimals, because 0.1% matters here."""
    if value is None or value == "":
        return ""
    rate = float(value) * 100  # type: ignore[arg-type]
    return f"{rate:.1f}%" if rate >= 10 else f"{rate:.2f}%"
