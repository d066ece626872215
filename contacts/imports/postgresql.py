"""The PostgreSQL chunk writer: rows encoded as COPY text, staged, merged set-based."""

from __future__ import annotations

import re
from dataclasses import dataclass
from json.encoder import encode_basestring as _json_string  # C: quote and escape
from typing import Any

from django.db import IntegrityError, connection, transaction

from contacts.imports.csvparse import ContactRow
from contacts.imports.writers import IMPORT_SOURCE, BatchResult
from contacts.models import (
    Contact,
    ContactList,
    ImportMode,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionScope,
)
from contacts.selectors import parent_domains


@dataclass(frozen=True, slots=True)
class CopyChunk:
    """Rows already encoded as COPY text (PostgreSQL), a few MB instead of row objects."""

    rows: int
    data: bytes
    domains: frozenset[str] = frozenset()  # of the lower-cased addresses

    def __len__(self) -> int:
        return self.rows


_PG_STAGE = "skylark_import_chunk"
# The domain of a staged address: everything after the last "@" (a quoted local part may
# contain "@", a domain never does).
_PG_DOMAIN = r"substring(s.email_key from '[^@]*$')"


# For one chunk's transaction: sort the chunk in memory, not in temporary files; no JIT
# compilation (about 20 ms a chunk, for statements that run once); no wait for the WAL flush
# (a crash can lose the last chunks, which a re-run imports again: imports are idempotent).
_PG_CHUNK_SETTINGS = (
    "SET LOCAL work_mem = '64MB'; SET LOCAL jit = off; SET LOCAL synchronous_commit = off"
)


_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_COLUMNS = 5
_COPY_ESCAPED = re.compile(r"[\\\n\r]")  # besides tabs, which a joined row has


def _copy_text(value: str) -> str:
    """A value in COPY's text format (backslash, tab, newline and CR escaped)."""
    return value.translate(_COPY_ESCAPES) if _COPY_SPECIAL.search(value) else value


def _json_object(mapping: dict[str, str]) -> str:
    """JSON for a dict of strings (json.dumps builds an encoder per call: twice as slow)."""
    if not mapping:
        return "{}"
    items = ",".join(
        [f"{_json_string(key)}:{_json_string(value)}" for key, value in mapping.items()]
    )
    return f"{{{items}}}"


def pg_copy_chunk(batch: list[ContactRow]) -> CopyChunk:
    """Encode rows for ``COPY ... (line, email, email_key, name, attributes) FROM STDIN``.

    Runs in the reader thread, so the database connection never waits for it. A row is
    joined as is, and escaped field by field only when it holds a character COPY treats
    specially (rare: a tab, line break or backslash in a name or attribute).
    """
    lines = []
    append = lines.append
    escaped = _COPY_ESCAPED.search
    separators = _COPY_COLUMNS - 1
    domains = set()
    add_domain = domains.add
    for row in batch:
        email = row.email
        key = email.lower()
        add_domain(key.rpartition("@")[2])
        fields = (str(row.line), email, key, row.name, _json_object(row.attributes))
        line = "\t".join(fields)
        if escaped(line) or line.count("\t") != separators:
            line = "\t".join([_copy_text(value) for value in fields])
        append(line)
    lines.append("")
    return CopyChunk(rows=len(batch), data="\n".join(lines).encode(), domains=frozenset(domains))


def add_batch_postgresql(
    batch: CopyChunk, contact_list: ContactList | None, mode: ImportMode, source: str
) -> BatchResult:
    """Add or upsert a chunk: COPY into a temporary table, then set-based statements.

    Suppressed rows are deleted from the staged chunk (address by join, domains and their
    parents through the chunk's distinct domains). One statement then matches existing
    contacts on lower(email), updates the changed ones (upsert), inserts the others and
    subscribes both, so the contacts table is probed once per row, not once per statement.
    """
    contact_table = Contact._meta.db_table
    subscription_table = Subscription._meta.db_table
    suppression_table = Suppression._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(_PG_CHUNK_SETTINGS)
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {_PG_STAGE} (line bigint NOT NULL,"
            " email text NOT NULL, email_key text NOT NULL, name text NOT NULL,"
            " attributes jsonb NOT NULL) ON COMMIT DELETE ROWS"
        )
        # Empty already after a commit; not when the import runs inside an outer transaction
        # (the previous chunk would otherwise be processed again with every later one).
        cursor.execute(f"TRUNCATE {_PG_STAGE}")
        with cursor.cursor.copy(
            f"COPY {_PG_STAGE} (line, email, email_key, name, attributes) FROM STDIN"
        ) as copy:
            copy.write(batch.data)
        suppressed_lines = _pg_delete_suppressed(cursor, suppression_table, batch.domains)
        staged = len(batch) - len(suppressed_lines)
        if not staged:
            return BatchResult(suppressed_lines=suppressed_lines)
        upsert = mode == ImportMode.UPSERT
        merged_name = "CASE WHEN m.name <> '' THEN m.name ELSE c.name END"
        changed = (
            f"""
            changed AS (
                UPDATE {contact_table} AS c
                SET name = {merged_name},
                    attributes = c.attributes || m.attributes,
                    updated_at = now()
                FROM matched AS m
                WHERE c.id = m.id
                  AND (c.name, c.attributes) IS DISTINCT FROM
                      ({merged_name}, c.attributes || m.attributes)
                RETURNING c.id
            ),"""
            if upsert
            else ""
        )
        subscribe_params = [
            contact_list.pk,
            SubscriptionStatus.SUBSCRIBED.value,
            source or IMPORT_SOURCE,
        ]
        try:
            # Fast path: a plain INSERT of the rows the lookup did not find (ON CONFLICT's
            # per-row speculative insertion costs about a third more on this table).
            with transaction.atomic():
                created, matched, updated = _pg_merge_chunk(
                    cursor, changed, upsert, subscribe_params, on_conflict=""
                )
        except IntegrityError:
            # Another writer committed one of these addresses after our lookup's snapshot, or
            # PostgreSQL's lower() takes two of the file's addresses for one: the safe way.
            created, matched, updated = _pg_merge_chunk(
                cursor, changed, upsert, subscribe_params, on_conflict="ON CONFLICT DO NOTHING"
            )
        if created + matched < staged:
            # The rows ON CONFLICT skipped belong to contacts our snapshot could not see; a
            # new statement sees them, so subscribe them too.
            cursor.execute(
                f"""
                INSERT INTO {subscription_table}
                    (contact_id, contact_list_id, status, source, created_at, updated_at)
                SELECT c.id, %s, %s, %s, now(), now()
                FROM {_PG_STAGE} AS s
                JOIN {contact_table} AS c ON lower(c.email) = lower(s.email)
                ON CONFLICT DO NOTHING
                """,
                subscribe_params,
            )
    return BatchResult(
        created=created,
        updated=updated,
        unchanged=staged - created - updated,
        suppressed_lines=suppressed_lines,
    )


def _pg_merge_chunk(
    cursor: Any, changed: str, upsert: bool, subscribe_params: list, *, on_conflict: str
) -> tuple[int, int, int]:
    """Look up, update, insert and subscribe the staged chunk in one statement.

    Its parts share one snapshot: the lookup is a LATERAL ... LIMIT 1, so always a probe of
    the lower(email) index (never a hash join over every contact, which grows with the table);
    new contacts' subscriptions take the ids from RETURNING and cannot exist yet, so only the
    matched contacts' subscriptions need ON CONFLICT. Returns (created, matched, updated).
    """
    contact_table = Contact._meta.db_table
    subscription_table = Subscription._meta.db_table
    subscribe = f"""
        INSERT INTO {subscription_table}
            (contact_id, contact_list_id, status, source, created_at, updated_at)
        SELECT ids.id, %s, %s, %s, now(), now()"""
    cursor.execute(
        f"""
        WITH matched AS MATERIALIZED (
            SELECT c.id, s.email, s.name, s.attributes
            FROM {_PG_STAGE} AS s
            CROSS JOIN LATERAL (
                SELECT id FROM {contact_table} WHERE lower(email) = lower(s.email) LIMIT 1
            ) AS c
        ),{changed}
        created AS (
            INSERT INTO {contact_table}
                (email, name, attributes, status, created_at, updated_at)
            SELECT s.email, s.name, s.attributes, 'active', now(), now()
            FROM {_PG_STAGE} AS s
            WHERE NOT EXISTS (SELECT FROM matched AS m WHERE m.email = s.email)
            ORDER BY lower(s.email)
            {on_conflict}
            RETURNING id
        ),
        subscribed_new AS ({subscribe} FROM created AS ids),
        subscribed_matched AS ({subscribe} FROM matched AS ids ON CONFLICT DO NOTHING)
        SELECT (SELECT count(*) FROM created),
               (SELECT count(*) FROM matched),
               {"(SELECT count(*) FROM changed)" if upsert else "0"}
        """,
        subscribe_params * 2,
    )
    return cursor.fetchone()


def _pg_delete_suppressed(
    cursor: Any, suppression_table: str, domains: frozenset[str]
) -> tuple[int, ...]:
    """Delete suppressed rows from the staged chunk; their lines, in file order.

    Addresses by a join on the suppression's (value, scope) index; domains by looking up the
    parent domains of the chunk's distinct ``domains`` (collected while encoding the chunk: a
    few hundred values, one array parameter).
    """
    cursor.execute(
        f"""
        DELETE FROM {_PG_STAGE} AS s
        USING {suppression_table} AS x
        WHERE x.scope = %s AND x.value = s.email_key
        RETURNING s.line
        """,
        [SuppressionScope.ADDRESS.value],
    )
    lines = [line for (line,) in cursor.fetchall()]
    parents = {domain: parent_domains(domain) for domain in domains}
    cursor.execute(
        f"SELECT value FROM {suppression_table} WHERE scope = %s AND value = ANY(%s)",
        [SuppressionScope.DOMAIN.value, sorted({p for ps in parents.values() for p in ps})],
    )
    blocked = {value for (value,) in cursor.fetchall()}
    if blocked:
        hit = [domain for domain, ps in parents.items() if not blocked.isdisjoint(ps)]
        cursor.execute(
            f"DELETE FROM {_PG_STAGE} AS s WHERE {_PG_DOMAIN} = ANY(%s) RETURNING s.line",
            [hit],
        )
        lines.extend(line for (line,) in cursor.fetchall())
    return tuple(sorted(lines))
