"""Segment rules: validation, and compilation into a Django ``Q`` over ``Contact``.

A segment is a list of rules joined by ``all`` (AND) or ``any`` (OR). A rule is a dict::

    {"field": "email", "op": "ends_with", "value": "@example.com"}
    {"field": "attributes.city", "op": "eq", "value": "Paris"}
    {"field": "attributes.age", "op": "gte", "value": 18}
    {"field": "attributes.renewal", "op": "within_days", "value": 30}
    {"field": "list", "op": "in", "value": 3, "status": "subscribed"}
    {"field": "subscribed_at", "op": "after", "value": "2024-01-01", "list": 3}

Fields: ``email``, ``name`` (text), ``status`` (contact status), ``created_at`` (date),
``attributes.<key>`` (any attribute), ``list`` (membership) and ``subscribed_at`` (the date a
subscription was created, optionally on one list).

Semantics worth knowing (docs/contacts.md, "Segments"):

- Text comparisons are on the attribute's text form. ``eq``/``neq`` are exact (case-sensitive,
  except on ``email`` where addresses compare case-insensitively); ``contains``,
  ``starts_with`` and ``ends_with`` ignore case. ``neq`` and ``not_contains`` also match
  contacts that do not have the attribute at all.
- An attribute is *set* when present, not null and not the empty string.
- Number comparisons read the attribute as a number (``"42"`` and ``42`` both count); a value
  that is not a number never matches (it is not an error).
- Dates in attributes are compared as ISO 8601 strings (``2024-05-01`` or
  ``2024-05-01T10:00:00``): ``before D`` is ``< D``, ``after D`` is ``>= D + 1 day`` (strictly
  after that day), ``within_days N`` is ``>= today - N days``. Any other date format compares
  as plain text, so store ISO dates.

The compiled ``Q`` works on SQLite and PostgreSQL; on PostgreSQL equality on an attribute uses
JSON containment (``attributes @> '{"city": "Paris"}'``), which the GIN index on ``attributes``
answers.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

from django.db import connection
from django.db.models import Exists, FloatField, Func, OuterRef, Q, TextField, Value
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Lower
from django.db.models.lookups import (
    Exact,
    GreaterThan,
    GreaterThanOrEqual,
    IsNull,
    LessThan,
    LessThanOrEqual,
)
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from contacts.errors import ContactsError
from mailkit.text import refused_path

MATCH_ALL = "all"
MATCH_ANY = "any"
MAX_RULES = 50
MAX_WITHIN_DAYS = 36600

TEXT_OPS = ("eq", "neq", "contains", "not_contains", "starts_with", "ends_with")
_NON_EMPTY_TEXT_OPS = ("contains", "not_contains", "starts_with", "ends_with")
SET_OPS = ("is_set", "is_not_set")
NUMBER_OPS = ("gt", "gte", "lt", "lte")
DATE_OPS = ("before", "after", "within_days")
LIST_OPS = ("in", "not_in")

# Which operators each field accepts; "attributes.<key>" takes ATTRIBUTE_OPS.
FIELD_OPS: dict[str, tuple[str, ...]] = {
    "email": (*TEXT_OPS,),
    "name": (*TEXT_OPS, *SET_OPS),
    "status": ("eq", "neq"),
    "created_at": DATE_OPS,
    "list": LIST_OPS,
    "subscribed_at": DATE_OPS,
}
ATTRIBUTE_OPS = (*TEXT_OPS, *SET_OPS, *NUMBER_OPS, *DATE_OPS)
OP_LABELS = {
    "eq": gettext_lazy("equals"),
    "neq": gettext_lazy("does not equal"),
    "contains": gettext_lazy("contains"),
    "not_contains": gettext_lazy("does not contain"),
    "starts_with": gettext_lazy("starts with"),
    "ends_with": gettext_lazy("ends with"),
    "is_set": gettext_lazy("is set"),
    "is_not_set": gettext_lazy("is not set"),
    "gt": ">",
    "gte": ">=",
    "lt": "<",
    "lte": "<=",
    "before": gettext_lazy("before"),
    "after": gettext_lazy("after"),
    "within_days": gettext_lazy("within the last N days"),
    "in": gettext_lazy("is in list"),
    "not_in": gettext_lazy("is not in list"),
}
SUBSCRIPTION_STATUSES = ("subscribed", "unconfirmed", "unsubscribed", "any")
CONTACT_STATUSES = ("active", "unsubscribed", "bounced", "complained")
# Letters of any script: imports keep Chinese headers as attribute names (城市, 会员等级).
_ATTRIBUTE_KEY = re.compile(r"\w[\w\- ]{0,99}")
# A number as text: what the numeric comparisons accept (anything else never matches).
_NUMBER_RE = r"^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$"


class SegmentRuleError(ContactsError):
    """Segment rules that cannot be compiled; ``errors`` holds one message per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))


@dataclass(frozen=True)
class Rule:
    """One validated rule."""

    field: str
    op: str
    value: Any = None
    status: str = "subscribed"  # list / subscribed_at rules: the subscription status
    list_id: int | None = None  # subscribed_at rules: one list, or any

    @property
    def attribute(self) -> str | None:
        return self.field.partition(".")[2] if self.field.startswith("attributes.") else None


# --- validation ----------------------------------------------------------------------------


def _parse_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value).strip()[:10])


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return float(value)


@dataclass
class _Draft:
    """One raw rule while the checks read it: they normalize ``value`` and ``list_id``."""

    number: int  # the rule's place in the list, from 1, as every message names it
    field: str
    op: str
    value: Any
    status: str
    list_id: Any
    list_ids: set[int] | None  # the existing lists; None: not checked
    allowed: tuple[str, ...] = ()
    errors: list[str] = dc_field(default_factory=list)

    def fail(self, problem: str) -> None:
        self.errors.append(
            _("Rule %(number)d: %(problem)s") % {"number": self.number, "problem": problem}
        )


RuleCheck = Callable[[_Draft], None]


def _check_field(draft: _Draft) -> None:
    """The field exists; sets the operators it takes."""
    if draft.field.startswith("attributes."):
        key = draft.field.partition(".")[2]
        if _ATTRIBUTE_KEY.fullmatch(key):
            draft.allowed = ATTRIBUTE_OPS
        else:
            draft.fail(
                _("attribute name %(key)s must be 1-100 letters, digits, _, - or spaces.")
                % {"key": repr(key)}
            )
    elif draft.field in FIELD_OPS:
        draft.allowed = FIELD_OPS[draft.field]
    else:
        draft.fail(
            _("unknown field %(field)s; use one of %(fields)s or attributes.<name>.")
            % {"field": repr(draft.field), "fields": ", ".join(FIELD_OPS)}
        )


def _check_operator(draft: _Draft) -> None:
    """The field takes the operator."""
    if draft.op not in draft.allowed:
        draft.fail(
            _("%(field)s cannot use %(op)s; use one of %(ops)s.")
            % {"field": draft.field, "op": repr(draft.op), "ops": ", ".join(draft.allowed)}
        )


def _value_none(draft: _Draft) -> None:
    """is_set / is_not_set take no value: whatever came is dropped."""
    draft.value = None


def _value_number(draft: _Draft) -> None:
    try:
        draft.value = _number(draft.value)
    except (TypeError, ValueError):
        draft.fail(
            _("%(op)s needs a number, not %(value)s.")
            % {"op": draft.op, "value": repr(draft.value)}
        )


def _value_days(draft: _Draft) -> None:
    try:
        days = int(draft.value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: Infinity in the JSON
        days = -1
    if 0 <= days <= MAX_WITHIN_DAYS:
        draft.value = days
    else:
        draft.fail(
            _("within_days needs a whole number of days (0-%(max)d).") % {"max": MAX_WITHIN_DAYS}
        )


def _value_date(draft: _Draft) -> None:
    try:
        draft.value = _parse_date(draft.value).isoformat()
    except (TypeError, ValueError):
        draft.fail(
            _("%(op)s needs a date as YYYY-MM-DD, not %(value)s.")
            % {"op": draft.op, "value": repr(draft.value)}
        )


def _value_list(draft: _Draft) -> None:
    draft.value = _list_id(draft, draft.value, _("choose a list (a list id), not %(value)s."))


def _value_contact_status(draft: _Draft) -> None:
    if draft.value not in CONTACT_STATUSES:
        draft.fail(
            _("status must be one of %(statuses)s.") % {"statuses": ", ".join(CONTACT_STATUSES)}
        )


def _value_text(draft: _Draft) -> None:
    value = draft.value
    if value is None or isinstance(value, (dict, list)):
        draft.fail(_("%(op)s needs a text value.") % {"op": draft.op})
        return
    if isinstance(value, bool):
        draft.value = "true" if value else "false"
        return
    # 3.0 from a JSON number reads as "3", as the attribute's text form does.
    draft.value = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    if draft.op in _NON_EMPTY_TEXT_OPS and not draft.value:
        draft.fail(_("%(op)s needs a non-empty value.") % {"op": draft.op})


# How each operator's value is checked and normalized; a field may have its own instead.
VALUE_CHECKS: dict[str, RuleCheck] = {
    **dict.fromkeys(TEXT_OPS, _value_text),
    **dict.fromkeys(SET_OPS, _value_none),
    **dict.fromkeys(NUMBER_OPS, _value_number),
    "before": _value_date,
    "after": _value_date,
    "within_days": _value_days,
    **dict.fromkeys(LIST_OPS, _value_list),
}
FIELD_VALUE_CHECKS: dict[str, RuleCheck] = {"status": _value_contact_status}


def _check_value(draft: _Draft) -> None:
    """The value suits the operator (or the field, for the contact status)."""
    FIELD_VALUE_CHECKS.get(draft.field, VALUE_CHECKS[draft.op])(draft)


def _check_subscription_status(draft: _Draft) -> None:
    """Membership and subscription-date rules name a subscription status."""
    if draft.field in ("list", "subscribed_at") and draft.status not in SUBSCRIPTION_STATUSES:
        draft.fail(
            _("subscription status must be one of %(statuses)s.")
            % {"statuses": ", ".join(SUBSCRIPTION_STATUSES)}
        )


def _check_subscribed_list(draft: _Draft) -> None:
    """A subscription-date rule may name one list; every other rule names none."""
    if draft.field == "subscribed_at" and draft.list_id not in (None, ""):
        draft.list_id = _list_id(draft, draft.list_id, _("list must be a list id, not %(value)s."))
    else:
        draft.list_id = None


# The checks of one rule, in order. A gate's failure ends the rule's checks: the later ones
# need a known field and an operator it takes.
RULE_CHECKS: tuple[tuple[str, RuleCheck], ...] = (
    ("field", _check_field),
    ("operator", _check_operator),
    ("value", _check_value),
    ("subscription status", _check_subscription_status),
    ("subscribed list", _check_subscribed_list),
)
_GATES = frozenset({"field", "operator"})


def _validate_rule(
    index: int, raw: Any, *, list_ids: set[int] | None
) -> tuple[Rule | None, list[str]]:
    """One raw rule checked by RULE_CHECKS: the rule, or None and its problems."""
    if not isinstance(raw, Mapping):
        problem = _("must be an object with field, op and value.")
        return None, [_("Rule %(number)d: %(problem)s") % {"number": index + 1, "problem": problem}]
    draft = _Draft(
        number=index + 1,
        field=str(raw.get("field") or "").strip(),
        op=str(raw.get("op") or "").strip(),
        value=raw.get("value"),
        status=str(raw.get("status") or "subscribed"),
        list_id=raw.get("list"),
        list_ids=list_ids,
    )
    for name, check in RULE_CHECKS:
        check(draft)
        if draft.errors and name in _GATES:
            break
    if draft.errors:
        return None, draft.errors
    return Rule(draft.field, draft.op, draft.value, draft.status, draft.list_id), []


def _list_id(draft: _Draft, value: Any, need: str) -> Any:
    """``value`` as a list id, or the value unchanged with ``need`` (a message) failed."""
    try:
        list_id = int(value)
    except (TypeError, ValueError):
        draft.fail(need % {"value": repr(value)})
        return value
    if draft.list_ids is not None and list_id not in draft.list_ids:
        draft.fail(_("no contact list with id %(id)d.") % {"id": list_id})
    return list_id


def rules_validate(
    rules: Any, *, match: str = MATCH_ALL, check_lists: bool = True
) -> tuple[Rule, ...]:
    """The rules, checked and normalized; SegmentRuleError lists every problem at once."""
    if match not in (MATCH_ALL, MATCH_ANY):
        raise SegmentRuleError(
            [
                _("match must be %(all)s or %(any)s.")
                % {"all": repr(MATCH_ALL), "any": repr(MATCH_ANY)}
            ]
        )
    if not isinstance(rules, list):
        raise SegmentRuleError([_("Rules must be a JSON list of rule objects.")])
    if not rules:
        raise SegmentRuleError([_("Add at least one rule.")])
    if len(rules) > MAX_RULES:
        raise SegmentRuleError(
            [
                ngettext("At most %(max)d rule.", "At most %(max)d rules.", MAX_RULES)
                % {"max": MAX_RULES}
            ]
        )
    unstorable = refused_path(rules)
    if unstorable is not None:
        # PostgreSQL refuses NUL in a query's text as in a stored row.
        raise SegmentRuleError(
            [_("Rule %(field)s holds a NUL character or invalid Unicode.") % {"field": unstorable}]
        )
    list_ids = None
    if check_lists:
        from contacts.models import ContactList

        list_ids = set(ContactList.objects.values_list("id", flat=True))
    validated: list[Rule] = []
    errors: list[str] = []
    for index, raw in enumerate(rules):
        rule, problems = _validate_rule(index, raw, list_ids=list_ids)
        errors += problems
        if rule is not None:
            validated.append(rule)
    if errors:
        raise SegmentRuleError(errors)
    return tuple(validated)


# --- compilation ---------------------------------------------------------------------------


class _NumberOrNull(Func):
    """The text as a double, or NULL when it is not a number (never a cast error).

    PostgreSQL raises on ``'abc'::double precision`` and SQLite quietly makes it 0, so both
    test the text first; CASE evaluates the cast only for numbers.
    """

    output_field = FloatField()

    def as_postgresql(self, compiler, connection, **extra_context):
        sql, params = compiler.compile(self.source_expressions[0])
        return (
            f"(CASE WHEN ({sql}) ~ %s THEN ({sql})::double precision END)",
            (*params, _NUMBER_RE, *params),
        )

    def as_sqlite(self, compiler, connection, **extra_context):
        sql, params = compiler.compile(self.source_expressions[0])
        # A number stored as JSON comes out of json_extract as integer/real; text is tested.
        return (
            f"(CASE WHEN typeof({sql}) IN ('integer', 'real') THEN ({sql}) "
            f"WHEN ({sql}) REGEXP %s THEN CAST(({sql}) AS REAL) END)",
            (*params, *params, *params, _NUMBER_RE, *params),
        )

    def as_sql(self, compiler, connection, **extra_context):  # other backends: plain cast
        return compiler.compile(Cast(self.source_expressions[0], FloatField()))


def _attribute_text(key: str) -> Cast:
    # Cast to text: SQLite's json_extract returns numbers as numbers; '42' must equal 42.
    return Cast(KeyTextTransform(key, "attributes"), TextField())


def _is_set(expression) -> Q:
    return Q(IsNull(expression, False)) & ~Q(Exact(expression, Value("")))


_TEXT_LOOKUPS = {
    "contains": "icontains",
    "not_contains": "icontains",
    "starts_with": "istartswith",
    "ends_with": "iendswith",
}


def _text_q(expression, op: str, value: str) -> Q:
    """Text operators on an expression that may be NULL (an attribute's text)."""
    if op in ("eq", "neq"):
        equal = Q(Exact(expression, Value(value)))
        return equal if op == "eq" else Q(IsNull(expression, True)) | ~equal
    lookup_class = expression.output_field.get_lookup(_TEXT_LOOKUPS[op])
    matched = Q(lookup_class(expression, Value(value)))
    if op == "not_contains":
        return Q(IsNull(expression, True)) | ~matched
    return matched


def _column_text_q(column: str, op: str, value: str, *, case_insensitive_eq: bool) -> Q:
    """Text operators on a NOT NULL column of Contact."""
    if op in ("eq", "neq"):
        # lower() on both sides, as in the lower(email) unique index, which then serves it
        # (iexact compiles to UPPER() on PostgreSQL: a scan of every contact).
        equal = (
            Q(Exact(Lower(column), Lower(Value(value))))
            if case_insensitive_eq
            else Q(**{column: value})
        )
        return equal if op == "eq" else ~equal
    matched = Q(**{f"{column}__{_TEXT_LOOKUPS[op]}": value})
    return ~matched if op == "not_contains" else matched


def _day_start(day: dt.date) -> dt.datetime:
    return timezone.make_aware(dt.datetime.combine(day, dt.time.min))


def _datetime_q(field: str, op: str, value: Any) -> Q:
    if op == "before":
        return Q(**{f"{field}__lt": _day_start(_parse_date(value))})
    if op == "after":
        return Q(**{f"{field}__gte": _day_start(_parse_date(value) + dt.timedelta(days=1))})
    return Q(**{f"{field}__gte": timezone.now() - dt.timedelta(days=int(value))})


def _attribute_q(rule: Rule) -> Q:
    key = rule.attribute or ""
    text = _attribute_text(key)
    op = rule.op
    if op in SET_OPS:
        present = _is_set(text)
        return present if op == "is_set" else ~present
    if op in NUMBER_OPS:
        number = _NumberOrNull(KeyTextTransform(key, "attributes"))
        lookup = {
            "gt": GreaterThan,
            "gte": GreaterThanOrEqual,
            "lt": LessThan,
            "lte": LessThanOrEqual,
        }[op]
        return Q(lookup(number, Value(rule.value)))
    if op in DATE_OPS:
        # ISO 8601 strings sort like the dates they spell (see the module docstring).
        if op == "before":
            return Q(LessThan(text, Value(rule.value)))
        if op == "after":
            next_day = (_parse_date(rule.value) + dt.timedelta(days=1)).isoformat()
            return Q(GreaterThanOrEqual(text, Value(next_day)))
        since = (timezone.localdate() - dt.timedelta(days=int(rule.value))).isoformat()
        return Q(GreaterThanOrEqual(text, Value(since)))
    if op in ("eq", "neq") and connection.vendor == "postgresql":
        # Containment lets the GIN (jsonb_path_ops) index answer; a number typed as text in
        # the rule also matches the number stored as JSON, like the text comparison does.
        equal = Q(attributes__contains={key: rule.value})
        number = _as_json_number(rule.value)
        if number is not None:
            equal |= Q(attributes__contains={key: number})
        return equal if op == "eq" else ~equal
    return _text_q(text, op, rule.value)


def _as_json_number(value: str) -> int | float | None:
    if not re.fullmatch(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?", value):
        return None
    number = float(value)
    return int(number) if "." not in value else number


def _subscriptions(rule: Rule):
    from contacts.models import Subscription

    subscriptions = Subscription.objects.filter(contact_id=OuterRef("pk"))
    if rule.status != "any":
        subscriptions = subscriptions.filter(status=rule.status)
    return subscriptions


def _email_q(rule: Rule) -> Q:
    return _column_text_q("email", rule.op, rule.value, case_insensitive_eq=True)


def _name_q(rule: Rule) -> Q:
    if rule.op in SET_OPS:
        present = ~Q(name="")
        return present if rule.op == "is_set" else ~present
    return _column_text_q("name", rule.op, rule.value, case_insensitive_eq=False)


def _status_q(rule: Rule) -> Q:
    return Q(status=rule.value) if rule.op == "eq" else ~Q(status=rule.value)


def _created_at_q(rule: Rule) -> Q:
    return _datetime_q("created_at", rule.op, rule.value)


def _list_q(rule: Rule) -> Q:
    member = Exists(_subscriptions(rule).filter(contact_list_id=rule.value))
    return Q(member) if rule.op == "in" else ~Q(member)


def _subscribed_at_q(rule: Rule) -> Q:
    subscriptions = _subscriptions(rule).filter(_datetime_q("created_at", rule.op, rule.value))
    if rule.list_id is not None:
        subscriptions = subscriptions.filter(contact_list_id=rule.list_id)
    return Q(Exists(subscriptions))


# How a validated rule of each field (FIELD_OPS) becomes a Q; attributes: _attribute_q.
FIELD_QUERIES: dict[str, Callable[[Rule], Q]] = {
    "email": _email_q,
    "name": _name_q,
    "status": _status_q,
    "created_at": _created_at_q,
    "list": _list_q,
    "subscribed_at": _subscribed_at_q,
}


def _rule_q(rule: Rule) -> Q:
    if rule.attribute is not None:
        return _attribute_q(rule)
    query = FIELD_QUERIES.get(rule.field)
    if query is None:  # validated before: unreachable
        raise SegmentRuleError([f"unknown field {rule.field!r}"])
    return query(rule)


def rules_to_q(rules: Sequence[Rule], *, match: str = MATCH_ALL) -> Q:
    """One ``Q`` over ``Contact`` for validated rules (rules_validate)."""
    combined = Q()
    for rule in rules:
        rule_q = _rule_q(rule)
        if not combined:
            combined = rule_q
        elif match == MATCH_ANY:
            combined |= rule_q
        else:
            combined &= rule_q
    return combined


def segment_contacts(*, rules: Any, match: str = MATCH_ALL, check_lists: bool = True):
    """The contacts matching raw rules (validated first): a lazy ``QuerySet[Contact]``."""
    from contacts.models import Contact

    validated = rules_validate(rules, match=match, check_lists=check_lists)
    return Contact.objects.filter(rules_to_q(validated, match=match))


def rules_describe(rules: Sequence[Rule], *, match: str = MATCH_ALL) -> str:
    """A one-line human description ("city equals Paris and age > 30", "is in list
    Newsletter", "subscribed_at within the last 30 days"): lists by name, not by id."""
    from contacts.models import ContactList

    list_ids = {rule.value for rule in rules if rule.field == "list"}
    names = dict(ContactList.objects.filter(id__in=list_ids).values_list("id", "name"))
    parts = []
    for rule in rules:
        subject = rule.attribute or rule.field
        if rule.op in SET_OPS:
            parts.append(f"{subject} {OP_LABELS[rule.op]}")
        elif rule.op == "within_days":
            parts.append(
                _("%(subject)s within the last %(days)s days")
                % {"subject": subject, "days": rule.value}
            )
        elif rule.field == "list":
            deleted = _("#%(id)s (deleted)") % {"id": rule.value}
            list_name = names.get(rule.value, deleted)
            parts.append(f"{OP_LABELS[rule.op]} {list_name}")
        else:
            parts.append(f"{subject} {OP_LABELS.get(rule.op, rule.op)} {rule.value}")
    joiner = _("and") if match == MATCH_ALL else _("or")
    return f" {joiner} ".join(parts)


def segment_preview(*, rules: Any, match: str = MATCH_ALL, sample_size: int = 10) -> dict:
    """Count (all and active) and a few matching contacts, for the editor's live preview.

    One aggregate query counts both, so the preview scans the contacts once.
    """
    from django.db.models import Count

    contacts = segment_contacts(rules=rules, match=match)
    counts = contacts.aggregate(count=Count("id"), active=Count("id", filter=Q(status="active")))
    sample = list(
        contacts.order_by("-id").values("id", "email", "name", "status")[: max(0, sample_size)]
    )
    return {"count": counts["count"], "active": counts["active"], "sample": sample}
