"""Resource limits of one template render: size, memory, time, iterations and depth."""

from __future__ import annotations

import contextvars
import sys
import time
from collections.abc import ItemsView, KeysView, Mapping, ValuesView
from dataclasses import dataclass
from typing import Any, TypeVar

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.utils import Namespace

from mailkit.i18n import gettext as _

__all__ = [
    "DEFAULT_LIMITS",
    "Budget",
    "RenderLimits",
    "budget_scope",
    "check_built",
    "check_compare",
    "check_comparisons",
    "check_measured",
    "check_repeat",
    "current_budget",
    "current_limits",
    "measure",
    "tick",
]


@dataclass(frozen=True)
class RenderLimits:
    """Caps that keep one hostile or careless template from stalling a whole send.

    The same limits apply wherever a template is rendered (admin preview, pre-flight, API,
    workers): every caller uses DEFAULT_LIMITS through compile_templates.
    """

    max_part_chars: int = 1_000_000  # per rendered part, and per text any operation builds
    max_seconds: float = 1.0  # CPU time per part, checked inside the render (see tick)
    max_iterations: int = 100_000  # loop items per part, all loops together
    max_range: int = 10_000  # items of one range()
    max_repeat: int = 10_000  # integer arguments that size a result (center, ljust, batch ...)
    max_subject_chars: int = 2_000
    max_items: int = 100_000  # items of one list, tuple or dict an operation builds
    # Memory of all the values one part builds, together: what a template may keep alive
    # (recursion, namespaces, lists of slices) cannot exceed it whatever the single sizes.
    max_built_bytes: int = 64 * 1024 * 1024
    max_depth: int = 50  # nested macro calls, recursive loops and block references
    max_int_bits: int = 100_000  # size of a number arithmetic may compute
    # The text part is derived from the rendered HTML only when the template could not be
    # converted once: the converter runs outside the budget, so its input is bounded instead.
    max_html_to_text_chars: int = 250_000
    # Compiling is not under the render budget and costs per tag (Jinja, Python's compiler):
    # 250,000 tags (2 MB) took 18 s and 1.2 GB. Gmail clips messages at 102 KB anyway.
    max_source_chars: int = 200_000
    max_source_tags: int = 5_000  # {{ }} and {% %} of one part: the compile cost is per tag
    # Characters one comparison may go through in C, out of reach of the clock: `b in [c] * N`,
    # `==` of two lists, sort and unique of long texts (a 1 MB text in a list of 100,000 took
    # 2 s per `in`, and sort's lowered keys 1 GB for a list of 1,000). About 2 ms of memcmp.
    max_compare_chars: int = 100_000_000


DEFAULT_LIMITS = RenderLimits()


class Budget:
    """What one rendered part has spent; reachable from filters and sandbox hooks."""

    __slots__ = ("built", "deadline", "depth", "iterations", "limits", "ticks")

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        # Thread CPU time, not wall clock: a busy machine or a GIL held by another thread
        # must not fail a template that is within its budget.
        self.deadline = time.thread_time() + limits.max_seconds
        self.iterations = 0
        self.built = 0
        self.depth = 0
        self.ticks = 0

    def tick(self, items: int = 0) -> None:
        if items:
            self.iterations += items
            if self.iterations > self.limits.max_iterations:
                raise SecurityError(
                    _("The template runs more than %(limit)s loop iterations.")
                    % {"limit": self.limits.max_iterations}
                )
        # The clock is read every 16 sandbox operations: every operation is bounded in size,
        # so 16 of them cost microseconds to a few milliseconds at most.
        self.ticks += 1
        if self.ticks & 15 == 0 and time.thread_time() > self.deadline:
            raise SecurityError(
                _("Rendering took longer than %(seconds)s seconds.")
                % {"seconds": self.limits.max_seconds}
            )

    def add_built(self, nbytes: int) -> None:
        self.built += nbytes
        if self.built > self.limits.max_built_bytes:
            raise SecurityError(
                _("Rendering would use more than %(limit)s MB of memory.")
                % {"limit": self.limits.max_built_bytes // (1024 * 1024)}
            )


_BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "skylark_render_budget", default=None
)


class budget_scope:  # noqa: N801 - used as a context manager, reads like a statement
    """Install a fresh budget for the part rendered inside the block."""

    def __init__(self, limits: RenderLimits) -> None:
        self.budget = Budget(limits)

    def __enter__(self) -> Budget:
        self._token = _BUDGET.set(self.budget)
        return self.budget

    def __exit__(self, *exc: object) -> None:
        _BUDGET.reset(self._token)


_V = TypeVar("_V")


def current_budget() -> Budget | None:
    return _BUDGET.get()


def current_limits() -> RenderLimits:
    budget = _BUDGET.get()
    return budget.limits if budget is not None else DEFAULT_LIMITS


def tick(items: int = 0) -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.tick(items)


def value_too_long(limit: int) -> SecurityError:
    return SecurityError(
        _("The template would build a text longer than %(limit)s characters.") % {"limit": limit}
    )


def check_repeat(*numbers: Any) -> None:
    cap = current_limits().max_repeat
    for number in numbers:
        if isinstance(number, int) and abs(number) > cap:
            raise SecurityError(
                _("A width or count of %(number)s is larger than the limit of %(limit)s.")
                % {"number": number, "limit": cap}
            )


_SEQUENCES = (list, tuple, set, frozenset, KeysView, ValuesView)
_LEAF_TEXT = (str, bytes, bytearray)


def measure(value: Any, limit: int, *, indent: int = 0) -> int:
    """Characters ``value`` takes as text (str, repr or JSON), stopping once past ``limit``.

    A list holding one string a thousand times is small in memory and a thousand strings long
    as text: every reference is counted, which is what str(), format, join and tojson build.
    ``indent`` adds JSON indentation per nesting level. The walk is bounded by ``limit``
    (every node counts at least one character) and ticks the budget.
    """
    total = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        if isinstance(item, _LEAF_TEXT):
            total += len(item) + 2
            continue
        if isinstance(item, Namespace):
            item = dict(item._Namespace__attrs)
            total += 12
        per_item = 2 + (indent * (depth + 1) + 1 if indent else 0)
        if isinstance(item, (dict, Mapping)):
            elements: Any = [element for pair in item.items() for element in pair]
            total += 2 + len(item) * (per_item + 2)
        elif isinstance(item, ItemsView):
            elements = [element for pair in item for element in pair]
            total += 2 + len(item) * (per_item + 2)
        elif isinstance(item, _SEQUENCES):
            elements = item
            total += 2 + len(item) * per_item
        else:
            total += _scalar_size(item)
            if total > limit:
                return total
            continue
        if total > limit:
            return total
        for element in elements:
            # Leaves are counted in place: only containers go on the stack.
            kind = type(element)
            if kind is str:
                total += len(element)
            elif kind is int:
                total += element.bit_length() // 3 + 1
            else:
                stack.append((element, depth + 1))
            if total > limit:
                return total
        seen += len(elements)
        if seen > 4096:
            seen = 0
            tick()
    return total


def _scalar_size(item: Any) -> int:
    if isinstance(item, jinja2.Undefined) or item is None or isinstance(item, bool):
        return 5
    if isinstance(item, int):
        return item.bit_length() // 3 + 2
    return 32  # floats, dates, macros: a short text


def check_measured(value: Any, *, indent: int = 0) -> None:
    """Refuse to turn ``value`` into text when that text would be longer than the cap."""
    cap = current_limits().max_part_chars
    if isinstance(value, str):
        size = len(value)
    else:
        size = measure(value, cap, indent=indent)
    if size > cap:
        raise value_too_long(cap)


def _deep_size(value: Any) -> int:
    size = sys.getsizeof(value)
    for element in value:
        if isinstance(element, (str, bytes, list, tuple)):
            size += sys.getsizeof(element)
    return size


def check_built(value: _V, *inputs: Any, deep: bool = False) -> _V:
    """Check a value a sandbox operation built and charge its memory to the budget.

    A value that is one of the operation's inputs was already paid for. ``deep`` also charges
    the strings and lists inside a container (split, list, batch and slicing make new ones).
    """
    if any(value is other for other in inputs):
        return value
    limits = current_limits()
    if isinstance(value, (str, bytes, bytearray)):
        if len(value) > limits.max_part_chars:
            raise value_too_long(limits.max_part_chars)
        nbytes = sys.getsizeof(value)
    elif isinstance(value, (list, tuple, dict, set, frozenset)):
        if len(value) > limits.max_items:
            raise SecurityError(
                _("The template would build a list of more than %(limit)s items.")
                % {"limit": limits.max_items}
            )
        nbytes = _deep_size(value) if deep and not isinstance(value, dict) else sys.getsizeof(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > limits.max_int_bits:
            raise SecurityError(_("The template would compute a number that is too large."))
        return value
    else:
        return value
    budget = _BUDGET.get()
    if budget is not None:
        budget.add_built(nbytes)
    return value


def _compare_refused() -> SecurityError:
    return SecurityError(
        _("The template compares texts or lists too large to compare in the time allowed.")
    )


def check_compare(left: Any, right: Any, *, op: str) -> None:
    """Refuse one comparison (``in``, ``==``, ``<`` ...) that would go through too much text.

    CPython compares texts and lists in C: one such comparison cannot be interrupted by the
    clock, so what it may cost is bounded before it runs. A text compared with a text is
    linear in sizes already bounded; containers are what multiply the cost.
    """
    limit = current_limits().max_compare_chars
    if op in ("in", "notin"):
        if not isinstance(right, (list, tuple)):
            return  # a substring search, or a hash lookup: linear in bounded sizes
        # Every element may be compared with the needle: the smaller of the two bounds.
        if len(right) * measure(left, limit) <= limit:
            return
        cost = measure(right, limit)
    elif isinstance(left, _COMPARED) and isinstance(right, _COMPARED):
        cost = min(measure(left, limit), measure(right, limit))
    else:
        return
    if cost > limit:
        raise _compare_refused()


_COMPARED = (list, tuple, dict, set, frozenset)


def check_comparisons(items: Any, *, sorting: bool) -> None:
    """Refuse to sort, deduplicate or take the extreme of ``items`` when that costs too much.

    Each of the n items may be compared log n times (sorting) or once, each comparison as
    long as the longest item; sorting also keeps a key per item, a lowered copy of each text
    unless case_sensitive is given, charged to the memory budget as if it always were.
    """
    limit = current_limits().max_compare_chars
    count = len(items)
    longest = 0
    sizes: dict[int, int] = {}
    for item in items:
        kind = type(item)
        if kind is str:
            size = len(item)
        elif kind in (int, float, bool) or item is None:
            continue
        else:
            size = sizes.get(id(item), -1)
            if size < 0:
                size = sizes[id(item)] = measure(item, limit)
        if size > longest:
            longest = size
    rounds = max(count, 1).bit_length() if sorting else 1
    if count * longest * rounds > limit:
        raise _compare_refused()
    budget = _BUDGET.get()
    if sorting and budget is not None:
        budget.add_built(count * longest)
