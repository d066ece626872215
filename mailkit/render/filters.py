"""Filters of the sandbox: the marketer's own (date, number) and Jinja's, each under the budget."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.filters import make_attrgetter
from jinja2.utils import pass_environment

from mailkit.i18n import gettext as _
from mailkit.render.limits import (
    check_built,
    check_compare,
    check_comparisons,
    check_measured,
    check_repeat,
    current_limits,
    measure,
    tick,
    value_too_long,
)

__all__ = [
    "check_percent",
    "computed_width_refused",
    "filter_date",
    "filter_datetime",
    "filter_default",
    "filter_number",
    "install",
    "joined_items",
]


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


# Digits before the decimal point that number() formats; a longer number passes through.
_NUMBER_MAX_DIGITS = 1_000


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
    # Decimal("1e999999999") is a dozen characters and formats as a billion digits, in one C
    # call the clock cannot interrupt (3.6 GB in the web worker): such a number is not one a
    # person reads, so it passes through like any other non-number.
    if not number.is_finite() or number.adjusted() > _NUMBER_MAX_DIGITS:
        return str(value)
    decimals = max(0, min(int(decimals), 20))
    text = f"{number:,.{decimals}f}"
    return (
        text.translate({ord(","): "\0", ord("."): "\1"})
        .replace("\0", str(thousands)[:4])
        .replace("\1", str(decimal_point)[:4])
    )


# --------------------------------------------------------------------------------------------
# Jinja's filters under the budget.
#
# Every filter ticks the clock. Filters that turn their input into text (nearly all of them)
# first measure it, since str() of a list holding one long string many times is as long as
# all of them; the few whose arguments multiply the output are bounded before they run; every
# result is checked and charged to the memory budget.

# Filters that never turn their input into text. Everything else is measured first, so a
# filter added by a later Jinja version is guarded by default.
_STRUCTURAL = frozenset(
    {
        "abs", "attr", "batch", "count", "d", "default", "dictsort", "first", "float",
        "groupby", "int", "items", "last", "length", "list", "map", "max", "min", "random",
        "reject", "rejectattr", "reverse", "round", "select", "selectattr", "slice", "sort",
        "sum", "unique", "filesizeformat", "_skylark_guard_iter",
    }
)  # fmt: skip
# Filters that return one of the values they were given: nothing new to pay for.
_SELECTING = frozenset({"attr", "d", "default", "first", "last", "max", "min", "random"})
# Filters whose integer arguments size the output.
_SIZED = frozenset({"center", "indent", "wordwrap", "batch", "slice"})
_CONTAINERS = (list, tuple, dict, set, frozenset)
# Filters that compare their items in C (and, but for case_sensitive, lower every text key).
_COMPARING = frozenset({"sort", "dictsort", "groupby", "unique", "max", "min"})
_SORTING = frozenset({"sort", "dictsort", "groupby"})


# printf-style conversion: %[(key)][flags][width][.precision][length]type
_PERCENT_FIELD = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?[#0\- +]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?[hlL]?"
    r"(?P<type>.?)",
    re.DOTALL,
)


def computed_width_refused() -> SecurityError:
    return SecurityError(_("Computed widths are not allowed in format strings."))


def check_percent(template: str, values: Any) -> None:
    """Refuse ``template % values`` when the text it builds would exceed the cap.

    Every field is counted with what it formats (a mapping key used ten times counts ten
    times) and its width, before anything is built.
    """
    cap = current_limits().max_part_chars
    positional = values if isinstance(values, tuple) else (values,)
    index = 0
    total = len(template)
    for field in _PERCENT_FIELD.finditer(template):
        if field.group("width") == "*" or field.group("precision") == "*":
            raise computed_width_refused()
        width = int(field.group("width") or 0)
        precision = int(field.group("precision") or 0)
        check_repeat(width, precision)
        kind = field.group("type")
        if kind == "%":
            total += 1
            continue
        key = field.group("key")
        if key is not None:
            value = values.get(key) if isinstance(values, Mapping) else None
        elif index < len(positional):
            value = positional[index]
            index += 1
        else:
            value = None  # too few values: Python raises a TypeError, nothing is built
        piece = measure(value, cap) if kind in "sra" else measure(value, cap) + precision + 330
        total += max(width, piece)
        if total > cap:
            raise value_too_long(cap)


def joined_items(value: Any, *, separator: Any) -> list[Any]:
    """The items of a join, refused when the joined text would exceed the cap."""
    if isinstance(value, jinja2.Undefined):
        return []
    items = list(value)
    cap = current_limits().max_part_chars
    total = len(str(separator)) * max(len(items) - 1, 0)
    if total > cap:
        raise value_too_long(cap)
    for item in items:
        total += len(item) if isinstance(item, str) else measure(item, cap)
        if total > cap:
            raise value_too_long(cap)
    return items


def _bound_indent(value: Any, width: Any = 4, *args: Any, **kwargs: Any) -> None:
    # Every line gets the indentation: lines x width is what it adds.
    text = value if isinstance(value, str) else str(value)
    step = len(width) if isinstance(width, str) else int(width)
    if len(text) + (text.count("\n") + 1) * step > current_limits().max_part_chars:
        raise value_too_long(current_limits().max_part_chars)


def _bound_wordwrap(
    value: Any,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    *args: Any,
    **kwargs: Any,
) -> None:
    # A line break at most every width/2 characters (a long word pushed to the next line)
    # plus one per existing line: that many copies of wrapstring.
    text = value if isinstance(value, str) else str(value)
    breaks = 2 * len(text) // max(int(width), 1) + text.count("\n") + 1
    if len(text) + breaks * len(wrapstring or "\n") > current_limits().max_part_chars:
        raise value_too_long(current_limits().max_part_chars)


def _bound_urlize(value: Any, trim_url_limit: Any = None, nofollow: bool = False,
                  target: Any = None, rel: Any = None, *args: Any, **kwargs: Any) -> None:  # fmt: skip
    # target and rel are written into every link; a link takes at least 3 characters.
    text = value if isinstance(value, str) else str(value)
    per_link = len(str(target or "")) + len(str(rel or ""))
    if len(text) + (len(text) // 3 + 1) * per_link > current_limits().max_part_chars:
        raise value_too_long(current_limits().max_part_chars)


def _bound_replace(value: Any, old: Any, new: Any, count: Any = None) -> None:
    text, old_s, new_s = str(value), str(old), str(new)
    occurrences = (len(text) + 1) if old_s == "" else text.count(old_s)
    if isinstance(count, int) and count >= 0:
        occurrences = min(occurrences, count)
    if len(text) + occurrences * max(0, len(new_s) - len(old_s)) > current_limits().max_part_chars:
        raise value_too_long(current_limits().max_part_chars)


def _bound_format(value: Any, *args: Any, **kwargs: Any) -> None:
    check_percent(str(value), kwargs or args)


def _bound_tojson(value: Any, indent: Any = None) -> None:
    step = len(indent) if isinstance(indent, str) else int(indent or 0)
    check_measured(value, indent=step)


_BOUNDS: dict[str, Callable[..., None]] = {
    "indent": _bound_indent,
    "wordwrap": _bound_wordwrap,
    "urlize": _bound_urlize,
    "replace": _bound_replace,
    "format": _bound_format,
    "tojson": _bound_tojson,
}


def _guard(name: str, original: Any) -> Any:
    pass_arg = getattr(original, "jinja_pass_arg", None)
    skip = 1 if pass_arg is not None else 0
    stringifies = name not in _STRUCTURAL
    bound = _BOUNDS.get(name)
    selecting = name in _SELECTING
    sized = name in _SIZED
    comparing = name in _COMPARING
    sorting = name in _SORTING

    def guarded(*args: Any, **kwargs: Any) -> Any:
        tick()
        value = args[skip] if len(args) > skip else None
        if comparing and value is not None and not isinstance(value, jinja2.Undefined):
            if isinstance(value, Mapping):
                check_comparisons(list(value.items()), sorting=sorting)
            else:
                if not isinstance(value, (list, tuple)):
                    value = list(value)  # a generator is read once: measured, then passed on
                    args = (*args[:skip], value, *args[skip + 1 :])
                check_comparisons(value, sorting=sorting)
        if sized:
            check_repeat(*args[skip + 1 :], *kwargs.values())
        if bound is not None:
            bound(*args[skip:], **kwargs)  # before measuring: it refuses the worst at once
        if stringifies and not isinstance(value, str):
            check_measured(value)
        result = original(*args, **kwargs)
        if selecting:
            return result
        # A container made from a generator, a text or a mapping holds new items.
        deep = not isinstance(value, _CONTAINERS)
        return check_built(result, value, deep=deep)

    if pass_arg is not None:
        guarded.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]
    guarded.__name__ = getattr(original, "__name__", name)
    return guarded


# Tests that compare their two arguments: "in" looks for the value in the argument.
_COMPARING_TESTS = {"in": "in"} | dict.fromkeys(
    ("==", "eq", "equalto", "!=", "ne", ">", "gt", "greaterthan", "ge", ">=", "<", "lt",
     "lessthan", "<=", "le"),
    "eq",
)  # fmt: skip


def _guard_test(original: Any, name: str = "") -> Any:
    compare_op = _COMPARING_TESTS.get(name)

    def guarded(*args: Any, **kwargs: Any) -> Any:
        tick()
        if compare_op is not None and len(args) == 2:
            check_compare(args[0], args[1], op=compare_op)
        return original(*args, **kwargs)

    pass_arg = getattr(original, "jinja_pass_arg", None)
    if pass_arg is not None:
        guarded.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]
    return guarded


@jinja2.pass_eval_context
def _join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
    if attribute is not None and not isinstance(value, jinja2.Undefined):
        value = map(make_attrgetter(eval_ctx.environment, attribute), value)
    items = joined_items(value, separator=d)
    return jinja2.filters.sync_do_join(eval_ctx, items, d)


@pass_environment
def _sum(environment: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
    # The builtin sums in C: a list of lists would be copied over and over, out of reach of
    # the clock. Here every addition is a checked operation.
    if attribute is not None:
        iterable = map(make_attrgetter(environment, attribute), iterable)
    if isinstance(start, str):
        raise TypeError("sum() can't sum strings [use ''.join(seq) instead]")
    total = start
    for item in iterable:
        total = environment.call_binop(None, "+", total, item)
    return total


def filter_default(value: Any, default_value: Any = "", boolean: bool = False) -> Any:
    """``{{ name | default("friend") }}``: the fallback for a missing, None or blank value.

    Jinja's own default() only replaces an undefined value, but an imported contact's empty
    name is defined and empty, and "Hello ," is what the recipient then reads. ``boolean``
    keeps Jinja's meaning: any false value (0, an empty list) takes the fallback too.
    """
    if isinstance(value, jinja2.Undefined) or value is None:
        return default_value
    if isinstance(value, str) and not value.strip():
        return default_value
    if boolean and not value:
        return default_value
    return value


def _guard_iter(value: Any) -> Any:
    """Wrapped around every {% for %} iterable at compile time (see SkylarkEnvironment)."""
    if isinstance(value, jinja2.Undefined):
        return value
    return _counted(value)


def _counted(iterable: Any) -> Any:
    count = 0
    for item in iterable:
        count += 1
        if count & 63 == 0:
            tick(64)
        yield item
    tick(count & 63)


def install(env: jinja2.Environment) -> None:
    """Put every filter and test of ``env`` under the budget, and add the marketer's filters."""
    filters = env.filters
    filters.pop("pprint", None)  # repr of arbitrary objects
    filters["join"] = _join
    filters["sum"] = _sum
    filters["date"] = filter_date
    filters["datetime"] = filter_datetime
    filters["number"] = filter_number
    filters["default"] = filters["d"] = filter_default
    filters["_skylark_guard_iter"] = _guard_iter
    for name, original in list(filters.items()):
        filters[name] = _guard(name, original)
    for name, original in list(env.tests.items()):
        env.tests[name] = _guard_test(original, name)
