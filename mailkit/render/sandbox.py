"""The Jinja2 sandbox marketer templates run in: every operation checked against the budget."""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.compiler import optimizeconst as _optimizeconst
from jinja2.exceptions import SecurityError
from jinja2.runtime import BlockReference, LoopContext, Macro, markup_join, str_join
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from markupsafe import Markup

from mailkit.i18n import gettext as _
from mailkit.render import filters as guarded
from mailkit.render.filters import check_percent, computed_width_refused
from mailkit.render.limits import (
    check_built,
    check_compare,
    check_measured,
    check_repeat,
    current_budget,
    current_limits,
    measure,
    tick,
    value_too_long,
)

__all__ = ["LenientUndefined", "SkylarkEnvironment", "make_environment"]


class LenientUndefined(jinja2.ChainableUndefined):
    """Renders empty, chains attribute access, compares false, absorbs arithmetic."""

    __slots__ = ()

    def _absorb(self, *args: Any, **kwargs: Any) -> LenientUndefined:
        return self

    # jinja2's stubs type these as its one failing method; here they absorb instead.
    __add__ = __radd__ = __sub__ = __rsub__ = _absorb  # type: ignore[assignment]
    __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _absorb  # type: ignore[assignment]
    __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = _absorb  # type: ignore[assignment]
    __pos__ = __neg__ = __call__ = _absorb  # type: ignore[assignment]

    def _false(self, other: Any) -> bool:
        return False

    __lt__ = __le__ = __gt__ = __ge__ = _false  # type: ignore[assignment]

    def __int__(self) -> int:  # type: ignore[override]
        return 0

    def __float__(self) -> float:  # type: ignore[override]
        return 0.0

    __hash__ = jinja2.ChainableUndefined.__hash__


class _SkylarkCodeGenerator(CodeGenerator):
    """Routes ``~`` through the environment so that its parts are measured before joining."""

    @_optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked_concat(context, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    @_optimizeconst
    def visit_Compare(self, node: nodes.Compare, frame: Frame) -> None:
        # `in`, `==`, `<` ... of lists run in C, out of reach of the clock: measured first.
        # The operands of a chain are evaluated before comparing (no side effects in Jinja).
        self.write("environment.checked_compare(")
        self.visit(node.expr, frame)
        for operand in node.ops:
            self.write(f", {operand.op!r}, ")
            self.visit(operand.expr, frame)
        self.write(")")

    @_optimizeconst
    def visit_Getitem(self, node: nodes.Getitem, frame: Frame) -> None:
        # Jinja writes slices as plain Python subscripts; a slice is a new value to pay for.
        if not isinstance(node.arg, nodes.Slice):
            super().visit_Getitem(node, frame)
            return
        self.write("environment.checked_slice(")
        self.visit(node.node, frame)
        self.write(", slice(")
        for part in (node.arg.start, node.arg.stop, node.arg.step):
            if part is None:
                self.write("None")
            else:
                self.visit(part, frame)
            self.write(", ")
        self.write("))")


_SPEC_NUMBER = re.compile(r"\d+")
# Methods that only ever make text the marketer does not need and that multiply sizes in ways
# the checks below would have to model (translate tables, tab expansion, bytes of any length).
_BLOCKED_METHODS = frozenset({"encode", "translate", "maketrans", "expandtabs", "to_bytes"})
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})
_SPLIT_METHODS = frozenset({"split", "rsplit", "splitlines", "partition", "rpartition"})
_NESTED_CALLABLES = (Macro, LoopContext, BlockReference)
_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gteq": operator.ge,
    "lt": operator.lt,
    "lteq": operator.le,
    "in": lambda left, right: left in right,
    "notin": lambda left, right: left not in right,
}
_SEQUENCE_TYPES = (str, bytes, bytearray, list, tuple)


class _CountingFormatterMixin:
    """str.format that counts what it builds, field by field, and stops at the cap."""

    _built_chars = 0

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self._built_chars = len(format_string)
        built: str = super().vformat(format_string, args, kwargs)  # type: ignore[misc]
        return built

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion:
            check_measured(value)  # repr() of a container is as long as its contents
        return super().convert_field(value, conversion)  # type: ignore[misc]

    def format_field(self, value: Any, format_spec: str) -> Any:
        if "*" in format_spec:
            raise computed_width_refused()
        numbers = [int(n) for n in _SPEC_NUMBER.findall(format_spec)]
        check_repeat(*numbers)
        cap = current_limits().max_part_chars
        self._built_chars += max([measure(value, cap), *numbers])
        if self._built_chars > cap:
            raise value_too_long(cap)
        tick()
        return super().format_field(value, format_spec)  # type: ignore[misc]


class _CountingFormatter(_CountingFormatterMixin, SandboxedFormatter):
    pass


class _CountingEscapeFormatter(_CountingFormatterMixin, SandboxedEscapeFormatter):
    pass


class SkylarkEnvironment(ImmutableSandboxedEnvironment):
    code_generator_class = _SkylarkCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%", "//"})

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        tick()
        limits = current_limits()
        if operator == "**":
            if isinstance(right, int) and isinstance(left, int):
                bits = max(left.bit_length(), 1) * abs(right)
                if abs(right) > 1024 or bits > limits.max_int_bits:
                    raise SecurityError(_("The template would compute a number that is too large."))
        elif operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, _SEQUENCE_TYPES) and isinstance(times, int):
                    if len(seq) * times > limits.max_part_chars:
                        raise value_too_long(limits.max_part_chars)
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > limits.max_int_bits:
                    raise SecurityError(_("The template would compute a number that is too large."))
        elif operator == "+":
            if isinstance(left, _SEQUENCE_TYPES) and isinstance(right, _SEQUENCE_TYPES):
                if len(left) + len(right) > limits.max_part_chars:
                    raise value_too_long(limits.max_part_chars)
        elif operator == "%" and isinstance(left, str):
            check_percent(left, right)
        return check_built(self.binop_table[operator](left, right), left, right)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        # Also consulted by the attr filter, which does not go through getattr below.
        if attr in _BLOCKED_METHODS and isinstance(obj, (str, bytes, int)):
            return False
        return super().is_safe_attribute(obj, attr, value)

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        # Louder than the default undefined: probing internals is an error the pre-flight shows.
        raise SecurityError(
            _("Access to the attribute %(name)s is not allowed.") % {"name": repr(attribute)}
        )

    def getattr(self, obj: Any, attribute: str) -> Any:
        tick()
        if attribute in _BLOCKED_METHODS and isinstance(obj, (str, bytes, int)):
            raise SecurityError(
                _("The method %(name)s is not allowed in templates.") % {"name": attribute}
            )
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        tick()
        if isinstance(argument, str) and argument in _BLOCKED_METHODS:
            if isinstance(obj, (str, bytes, int)):
                raise SecurityError(
                    _("The method %(name)s is not allowed in templates.") % {"name": argument}
                )
        value = super().getitem(obj, argument)
        if isinstance(argument, slice):
            return check_built(value, obj)  # a slice is a new string or list
        return value

    def checked_slice(self, obj: Any, part: slice) -> Any:
        tick()
        return check_built(obj[part], obj)

    def checked_compare(self, left: Any, *chain: Any) -> Any:
        tick()
        result: Any = True
        for index in range(0, len(chain), 2):
            op, right = chain[index], chain[index + 1]
            check_compare(left, right, op=op)
            result = _COMPARISONS[op](left, right)
            if not result:
                return result
            left = right
        return result

    def checked_concat(self, context: jinja2.runtime.Context, parts: tuple[Any, ...]) -> str:
        tick()
        cap = current_limits().max_part_chars
        total = 0
        for part in parts:
            total += len(part) if isinstance(part, str) else measure(part, cap)
            if total > cap:
                raise value_too_long(cap)
        join = markup_join if context.eval_ctx.autoescape else str_join
        return check_built(join(parts))

    def concat(self, parts: Iterable[Any]) -> str:
        # Every block, macro and call-block body is joined here.
        items = parts if isinstance(parts, list) else list(parts)
        total = 0
        cap = current_limits().max_part_chars
        for item in items:
            total += len(item)
            if total > cap:
                raise SecurityError(
                    _("The rendered text is longer than %(limit)s characters.") % {"limit": cap}
                )
        return check_built("".join(items))

    def wrap_str_format(self, value: Any) -> Any:
        if super().wrap_str_format(value) is None:
            return None
        owner = value.__self__
        formatter: SandboxedFormatter
        if isinstance(owner, Markup):
            formatter = _CountingEscapeFormatter(self, escape=owner.escape)
        else:
            formatter = _CountingFormatter(self)
        is_format_map = value.__name__ == "format_map"
        str_type = type(owner)

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                return cast(str, str_type(formatter.vformat(owner, (), args[0])))
            # str_type is str or Markup: a Markup's format stays Markup (escaped already).
            return cast(str, str_type(formatter.vformat(owner, args, kwargs)))

        return functools.update_wrapper(wrapper, value)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        tick()
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        deep = False
        if isinstance(owner, str):
            cap = current_limits().max_part_chars
            if name in _WIDTH_METHODS:
                check_repeat(*args, *kwargs.values())
            elif name == "replace" and len(args) >= 2:
                text, old, new = owner, str(args[0]), str(args[1])
                hits = (len(text) + 1) if old == "" else text.count(old)
                if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
                    hits = min(hits, args[2])
                if len(text) + hits * max(0, len(new) - len(old)) > cap:
                    raise value_too_long(cap)
            elif name == "join" and args:
                items = guarded.joined_items(args[0], separator=owner)
                args = (items, *args[1:])
            deep = name in _SPLIT_METHODS
        elif isinstance(owner, (list, tuple)) and name in ("count", "index") and args:
            check_compare(args[0], owner, op="in")
        if isinstance(__obj, _NESTED_CALLABLES):
            return __self._call_nested(__context, __obj, *args, **kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        if name == "get" and isinstance(owner, Mapping):
            return result  # a value the mapping holds: nothing new to pay for
        return check_built(result, owner, *args, *kwargs.values(), deep=deep)

    def _call_nested(self, context: Any, obj: Any, *args: Any, **kwargs: Any) -> Any:
        # Macros, recursive loops and block references can call themselves: bounded here with
        # a clear error, long before Python's recursion limit (which depends on the caller).
        budget = current_budget()
        if budget is None:
            return super().call(context, obj, *args, **kwargs)
        budget.depth += 1
        try:
            if budget.depth > budget.limits.max_depth:
                raise SecurityError(
                    _("Macros or recursive loops are nested more than %(limit)s levels deep.")
                    % {"limit": budget.limits.max_depth}
                )
            return super().call(context, obj, *args, **kwargs)
        finally:
            budget.depth -= 1

    def _generate(self, source: nodes.Template, *args: Any, **kwargs: Any) -> Any:
        # Every loop iterable goes through the budget (time and total iterations).
        for loop in source.find_all(nodes.For):
            loop.iter = nodes.Filter(
                loop.iter, "_skylark_guard_iter", [], [], None, None, lineno=loop.lineno
            )
        return super()._generate(source, *args, **kwargs)


def _finalize_output(value: Any) -> Any:
    if value is None:
        return ""
    if not isinstance(value, str):
        check_measured(value)  # {{ [big] * 1000 }}: str() of it would be a gigabyte
    return value


def _safe_range(*args: int) -> range:
    rng = range(*args)
    limit = current_limits().max_range
    if len(rng) > limit:
        raise SecurityError(
            _("range() of more than %(limit)s items is not allowed.") % {"limit": limit}
        )
    return rng


def make_environment(
    *, autoescape: bool, loader: jinja2.BaseLoader | None = None
) -> SkylarkEnvironment:
    env = SkylarkEnvironment(
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
    # loops and what it holds was built, and paid for, by checked operations.
    env.globals = {"range": _safe_range, "namespace": jinja2.utils.Namespace}
    guarded.install(env)
    return env
