"""Write send outcomes in bulk, and row by row when a bulk write is refused."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from delivery.intake.policy import synchronous_bounces_apply
from delivery.models import Delivery, DeliveryEvent, DeliveryStatus, EventKind
from mailkit.outcomes import Outcome
from mailkit.text import clean_text, has_refused

logger = logging.getLogger(__name__)

# What an outcome's row says when its own text could not be stored.
UNSTORABLE_REPLY = "(the reply could not be stored)"

_EVENT_FOR_STATUS = {
    DeliveryStatus.SENT: EventKind.SENT,
    DeliveryStatus.DEFERRED: EventKind.DEFERRED,
    DeliveryStatus.BOUNCED: EventKind.BOUNCED,
    DeliveryStatus.FAILED: EventKind.FAILED,
    DeliveryStatus.SUPPRESSED: EventKind.SUPPRESSED,
}


def deliveries_record(outcomes: Iterable[Outcome]) -> int:
    """Write a flush of outcomes: one bulk update, one bulk insert of events.

    Hard bounces also suppress the address and mark the contact bounced. Text from outside
    (the remote server's reply) is cleaned first. Should the bulk write still be refused,
    the flush is split in halves until the refused rows are alone, so that one bad row never
    costs the others (a message sent but left unrecorded would be sent again once its lease
    ran out) and costs about 2 log2(n) writes, not n.
    """
    outcomes = [_storable(o) for o in outcomes]
    if not outcomes:
        return 0
    try:
        _write(outcomes)
    except Exception as exc:
        logger.warning(
            "writing %d outcomes (deliveries %s-%s) failed (%s); splitting the write",
            len(outcomes),
            outcomes[0].delivery_id,
            outcomes[-1].delivery_id,
            type(exc).__name__,
        )
        failure = _write_split(outcomes, exc)
        if failure is not None:
            # Not the rows' fault (the database is gone): the caller's error handling applies.
            raise failure from exc
    return len(outcomes)


def _write_split(outcomes: list[Outcome], refused: Exception) -> Exception | None:
    """Write ``outcomes``, whose write was ``refused``, in halves; the first error that no
    split could avoid (even a refused row alone, without its text), or None."""
    if len(outcomes) == 1:
        try:
            _write_alone(outcomes[0], refused)
        except Exception as exc:
            return exc
        return None
    failure: Exception | None = None
    middle = len(outcomes) // 2
    for half in (outcomes[:middle], outcomes[middle:]):
        try:
            _write(half)
        except Exception as exc:
            failure = failure or _write_split(half, exc)
    return failure


def _write(outcomes: list[Outcome]) -> None:
    suppress = [o.delivery_id for o in outcomes if o.suppress]
    # A savepoint inside a caller's transaction, so that a refused write leaves it usable.
    with transaction.atomic():
        if connection.vendor == "postgresql":
            _update_from_values(outcomes, with_events=True)
        else:
            _update_from_values(outcomes)
            _insert_events(outcomes)
        if suppress:
            _hard_bounces_apply(suppress)


def _write_alone(outcome: Outcome, refused: Exception) -> None:
    """Write the status of one outcome whose own write was refused, without its text."""
    logger.error(
        # The error's text is not logged: it may quote the row (addresses, the reply).
        "delivery %s: outcome %s refused by the database (%s); written without its text",
        outcome.delivery_id,
        outcome.status,
        type(refused).__name__,
    )
    _write([_bare(outcome)])


def _storable(outcome: Outcome) -> Outcome:
    """The outcome with its text cleaned of what the databases refuse (NUL, surrogates)."""
    texts = (outcome.reply, outcome.reason, outcome.enhanced_status, outcome.message_id)
    if not any(has_refused(text) for text in texts):
        return outcome
    return dataclasses.replace(
        outcome,
        reply=clean_text(outcome.reply),
        reason=clean_text(outcome.reason),
        enhanced_status=clean_text(outcome.enhanced_status),
        message_id=clean_text(outcome.message_id),
    )


def _bare(outcome: Outcome) -> Outcome:
    """What is certain about an outcome whose text was refused: its status and times."""
    return dataclasses.replace(
        outcome,
        reply=UNSTORABLE_REPLY,
        reason="",
        enhanced_status="",
        smtp_code=outcome.smtp_code if 0 <= (outcome.smtp_code or 0) < 1000 else None,
    )


def _rows_source(types: tuple[str, ...], rows: list[tuple]) -> tuple[str, list]:
    """A FROM item `v(column1, column2, ...)` holding `rows`, and its parameters.

    PostgreSQL gets the rows as one JSON text parameter, taken apart by the server
    (`jsonb_array_elements`): the C JSON encoder builds it in a fraction of the time psycopg
    takes to quote one array per column (or a VALUES list of thousands of placeholders). As
    jsonb it is parsed once; as json each `->>` parsed its row again (a third of the
    statement's time). SQLite gets a VALUES list.
    """
    if connection.vendor == "postgresql":
        select, params = _rows_select(types, rows)
        return f"({select}) AS v", params
    placeholders = "(" + ", ".join(["%s"] * len(types)) + ")"
    params = [value for row in rows for value in row]
    return f"(VALUES {', '.join([placeholders] * len(rows))}) AS v", params


def _rows_select(types: tuple[str, ...], rows: list[tuple]) -> tuple[str, list]:
    """PostgreSQL: a SELECT of `rows` as columns column1, column2, ... from one jsonb
    parameter, and its parameters."""
    columns = ", ".join(f"(x->>{i})::{pg_type} AS column{i + 1}" for i, pg_type in enumerate(types))
    payload = json.dumps(rows, default=_json_default, separators=(",", ":"))
    return f"SELECT {columns} FROM jsonb_array_elements(%s::jsonb) AS x", [payload]


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _insert_events(outcomes: list[Outcome]) -> None:
    """One INSERT of the outcomes' events (bulk_create builds a model per row)."""
    table = DeliveryEvent._meta.db_table
    adapt = connection.ops.adapt_datetimefield_value
    columns = "delivery_id, kind, created_at, smtp_code, enhanced_status, detail, data"
    types = ("bigint", "varchar", "timestamptz", "integer", "varchar", "text", "jsonb")
    for start in range(0, len(outcomes), 500):
        rows = [
            (
                o.delivery_id,
                _EVENT_FOR_STATUS.get(o.status, EventKind.ATTEMPT),
                adapt(o.attempted_at),
                o.smtp_code,
                o.enhanced_status,
                o.reply,
                json.dumps({"reason": o.reason} if o.reason else {}),
            )
            for o in outcomes[start : start + 500]
        ]
        source, params = _rows_source(types, rows)
        selected = ", ".join(f"v.column{i + 1}" for i in range(len(types)))
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} ({columns}) SELECT {selected} FROM {source}",  # noqa: S608
                params,
            )


# Columns set from each outcome, after the id, with their PostgreSQL types.
_OUTCOME_COLUMNS = (
    ("status", "varchar"),
    ("reason", "varchar"),
    ("smtp_code", "integer"),
    ("enhanced_status", "varchar"),
    ("smtp_reply", "text"),
    ("message_id", "varchar"),
    ("next_attempt_at", "timestamptz"),
    ("sent_at", "timestamptz"),
    ("attempted_at", "timestamptz"),
)


def _update_from_values(
    outcomes: list[Outcome], *, chunk: int = 500, with_events: bool = False
) -> None:
    """One UPDATE ... FROM <rows> per chunk: Django's bulk_update builds a CASE per row and
    column, which costs seconds per thousand rows; this costs milliseconds.

    ``with_events`` (PostgreSQL): the same statement inserts the outcomes' events, from the
    same rows (one parameter to build and parse, one round trip).
    """
    table = Delivery._meta.db_table
    adapt = connection.ops.adapt_datetimefield_value
    types = ("bigint", *(pg_type for _, pg_type in _OUTCOME_COLUMNS), "varchar")
    value = {name: f"v.column{i + 2}" for i, (name, _) in enumerate(_OUTCOME_COLUMNS)}
    kind = f"v.column{len(types)}"
    assignments = ", ".join(
        f"{name} = {value[name]}" for name, _ in _OUTCOME_COLUMNS if name != "attempted_at"
    )
    update = (
        f"UPDATE {table} SET {assignments}, "  # noqa: S608 - names from model metadata
        f"attempts = attempts + 1, lease_expires_at = NULL, "
        f"updated_at = {value['attempted_at']}, "
        f"first_attempt_at = COALESCE(first_attempt_at, {value['attempted_at']}) "
        "FROM {source} WHERE "
        f"{table}.id = v.column1 "
        # Rows of a leased range are pending, of a per-row claim sending; a row taken back
        # by the sweeper (deferred) or cancelled meanwhile still gets what really happened
        # to it. A row already final (sent by another worker after a lease ran out) keeps
        # its status; the events still record both attempts.
        # Written as IS TRUE so that the planner looks each row up by primary key instead
        # of reading every leased row through the partial lease index (its statistics lag
        # far behind a running campaign): 2.6x cheaper per flush.
        f"AND ({table}.status IN ('pending', 'sending', 'deferred', 'cancelled')) IS TRUE"
    )
    events = (
        f"INSERT INTO {DeliveryEvent._meta.db_table} "  # noqa: S608 - names from model metadata
        "(delivery_id, kind, created_at, smtp_code, enhanced_status, detail, data) "
        f"SELECT v.column1, {kind}, {value['attempted_at']}, {value['smtp_code']}, "
        f"{value['enhanced_status']}, {value['smtp_reply']}, "
        f"CASE WHEN {value['reason']} <> '' THEN jsonb_build_object('reason', {value['reason']}) "
        "ELSE '{{}}'::jsonb END FROM v"
    )
    for start in range(0, len(outcomes), chunk):
        rows = [
            (
                o.delivery_id,
                o.status,
                o.reason,
                o.smtp_code,
                o.enhanced_status,
                o.reply,
                o.message_id,
                adapt(o.next_attempt_at),
                adapt(o.attempted_at if o.status == DeliveryStatus.SENT else None),
                adapt(o.attempted_at),
                _EVENT_FOR_STATUS.get(o.status, EventKind.ATTEMPT),
            )
            for o in outcomes[start : start + chunk]
        ]
        if with_events:
            select, params = _rows_select(types, rows)
            sql = (
                f"WITH v AS MATERIALIZED ({select}), "
                f"written AS ({update.format(source='v')}) {events.format()}"
            )
        else:
            source, params = _rows_source(types, rows)
            sql = update.format(source=source)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)


def _hard_bounces_apply(delivery_ids: list[int]) -> None:
    """Synchronous hard bounces: the bounce policy decides, as for a report (one table)."""
    pairs = Delivery.objects.filter(id__in=delivery_ids).values_list("email", "contact_id")
    synchronous_bounces_apply(recipients=list(pairs), source="smtp", now=timezone.now())
