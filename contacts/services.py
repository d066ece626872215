"""Writes for contacts: imports, suppressions and exports."""

from __future__ import annotations

import csv
import json
import logging
import os
import queue
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future
from contextlib import closing
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _json_string  # C: quote and escape
from typing import IO, Any

from django.conf import settings
from django.db import IntegrityError, OperationalError, connection, transaction
from django.utils import timezone

from contacts.csvparse import ContactFileReader, ContactRow, Record, contact_rows, plan_columns
from contacts.errors import ImportConfigError
from contacts.models import (
    Contact,
    ContactList,
    ImportJob,
    ImportMode,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
    SuppressionScope,
)
from contacts.normalize import EmailPolicy, InvalidEmail, RejectReason, normalize_email
from contacts.selectors import (
    contacts_by_keys,
    contacts_export_rows,
    parent_domains,
    suppression_check,
)

logger = logging.getLogger(__name__)

# Rejected rows kept in a summary (and on the ImportJob row); counts by reason are always
# complete. Bounds memory for a file that is nothing but garbage.
REJECTED_ROWS_LIMIT = 10_000
IMPORT_SOURCE = "import"


@dataclass(frozen=True, slots=True)
class ImportSummary:
    created: int
    updated: int
    unchanged: int
    rejected: int
    rejected_by_reason: dict[str, int]
    rejected_rows: list[tuple[int, str, str]]  # (line, reason, detail), at most the limit
    total: int
    encoding: str = ""
    delimiter: str | None = None


@dataclass(frozen=True, slots=True)
class ImportProgress:
    processed_rows: int
    created: int
    updated: int
    unchanged: int
    rejected: int
    rejected_by_reason: dict[str, int]
    bytes_read: int
    bytes_total: int | None
    encoding: str
    delimiter: str | None


@dataclass(slots=True)
class _Tally:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    by_reason: Counter = field(default_factory=Counter)
    rejected_rows: list[tuple[int, str, str]] = field(default_factory=list)

    def reject(self, line: int, reason: str, detail: str) -> None:
        self.rejected += 1
        self.by_reason[str(reason)] += 1
        if len(self.rejected_rows) < REJECTED_ROWS_LIMIT:
            self.rejected_rows.append((line, str(reason), detail))

    @property
    def processed(self) -> int:
        return self.created + self.updated + self.unchanged + self.rejected


@dataclass(frozen=True, slots=True)
class _BatchResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    suppressed_lines: tuple[int, ...] = ()


# COPY pays off with big chunks: 50,000 rows cost one round trip per statement and a few MB of
# client memory. Used for add/upsert on PostgreSQL when no batch size is given.
POSTGRESQL_BATCH_SIZE = 50_000
# An import that creates or updates this many contacts refreshes the planner's statistics.
ANALYZE_AFTER_ROWS = 10_000


def contacts_import(
    *,
    source: str | os.PathLike | IO[bytes],
    contact_list: ContactList | None,
    mode: ImportMode | str,
    encoding: str = "auto",
    mapping: dict[str, str] | None = None,
    job: ImportJob | None = None,
    on_progress: Callable[[ImportProgress], None] | None = None,
    reject_role: bool = False,
    reject_disposable: bool = False,
    batch_size: int | None = None,
    source_label: str = "",
) -> ImportSummary:
    """Import a contact file into ``contact_list`` according to ``mode``.

    Every data row ends up counted exactly once: created, updated, unchanged or rejected (with
    its line, reason and detail). Rows are written in chunks, each in its own transaction, so an
    import stopped half-way and run again ends with the same contacts and no duplicates.
    Imports never change a contact's status (an unsubscribed or bounced contact stays so) and
    never re-subscribe someone who unsubscribed from the list.
    """
    mode = ImportMode(mode)
    if mode in (ImportMode.ADD_NEW, ImportMode.UPSERT, ImportMode.UNSUBSCRIBE):
        if contact_list is None:
            raise ImportConfigError(f"mode {mode} needs a contact list")
    if not batch_size:
        batch_size = settings.EDM_IMPORT_BATCH_SIZE
        if connection.vendor == "postgresql" and mode in (ImportMode.ADD_NEW, ImportMode.UPSERT):
            batch_size = max(batch_size, POSTGRESQL_BATCH_SIZE)
    policy = EmailPolicy(reject_role=reject_role, reject_disposable=reject_disposable)
    if job is not None and not source_label:
        source_label = f"import #{job.pk}"
    writer = _writer_for(mode)
    encode = _encoder_for(mode)
    tally = _Tally()
    with ContactFileReader(source, encoding=encoding) as reader:
        info = reader.info
        plan = plan_columns(info.headers, mapping)

        def report() -> None:
            if on_progress is not None:
                on_progress(
                    ImportProgress(
                        processed_rows=tally.processed,
                        created=tally.created,
                        updated=tally.updated,
                        unchanged=tally.unchanged,
                        rejected=tally.rejected,
                        rejected_by_reason=dict(tally.by_reason),
                        bytes_read=reader.progress.bytes_read,
                        bytes_total=reader.progress.size,
                        encoding=info.encoding,
                        delimiter=info.delimiter,
                    )
                )

        report()
        chunks = _chunks(contact_rows(iter(reader), plan, policy=policy), batch_size, encode)
        writers = _parallel_writers(mode)
        if writers > 1:
            # This thread parses while writer threads, each with its own connection and
            # transaction per chunk, keep several server processes busy.
            with closing(chunks) as prepared:
                _write_parallel(
                    prepared, writers, writer, contact_list, mode, tally, source_label, report
                )
        else:
            if connection.vendor == "postgresql":
                # The file is parsed in a background thread while this one waits on the server
                # (psycopg releases the GIL then), so parsing and writing overlap instead of
                # adding up. Not on SQLite: it works in this process, and the two threads
                # fighting for the GIL made the import slower there (24,000 vs 30,000 rows/s).
                chunks = _read_ahead(chunks)
            with closing(chunks) as prepared:
                for batch, rejects in prepared:
                    for record in rejects:
                        tally.reject(record.line, record.reason, record.detail)
                    _write_batch(writer, batch, contact_list, mode, tally, source_label)
                    report()
    tally.rejected_rows.sort()
    logger.info(
        "import %s into list %s (%s): created=%d updated=%d unchanged=%d rejected=%d",
        job.pk if job else "-",
        contact_list.pk if contact_list else "-",
        mode,
        tally.created,
        tally.updated,
        tally.unchanged,
        tally.rejected,
    )
    return ImportSummary(
        created=tally.created,
        updated=tally.updated,
        unchanged=tally.unchanged,
        rejected=tally.rejected,
        rejected_by_reason=dict(sorted(tally.by_reason.items())),
        rejected_rows=tally.rejected_rows,
        total=tally.processed,
        encoding=info.encoding,
        delimiter=info.delimiter,
    )


@dataclass(frozen=True, slots=True)
class _CopyChunk:
    """Rows already encoded as COPY text (PostgreSQL), a few MB instead of row objects."""

    rows: int
    data: bytes
    domains: frozenset[str] = frozenset()  # of the lower-cased addresses

    def __len__(self) -> int:
        return self.rows


_Batch = list[ContactRow] | _CopyChunk
_Chunk = tuple[_Batch, list[Record]]


def _chunks(
    items: Iterable[ContactRow | Record],
    batch_size: int,
    encode: Callable[[list[ContactRow]], _Batch] | None = None,
) -> Generator[_Chunk, None, None]:
    """Group rows into (valid rows, rejected records), at most ``batch_size`` items in all.

    ``encode`` turns the valid rows into what the writer takes, in the reader thread.
    """
    batch: list[ContactRow] = []
    rejects: list[Record] = []
    for item in items:
        if isinstance(item, Record):
            rejects.append(item)
        else:
            batch.append(item)
        if len(batch) + len(rejects) >= batch_size:
            yield (encode(batch) if encode else batch), rejects
            batch, rejects = [], []
    if batch or rejects:
        yield (encode(batch) if encode else batch), rejects


@dataclass(frozen=True, slots=True)
class _Done:
    """End of the read-ahead queue; ``error`` is what stopped the producer, if anything."""

    error: BaseException | None = None


def _read_ahead(
    chunks: Generator[_Chunk, None, None], *, depth: int = 1
) -> Generator[_Chunk, None, None]:
    """Iterate ``chunks`` in a background thread, at most ``depth`` chunks ahead.

    The producer is pure (file reading and validation, no ORM). Its exception is raised here;
    closing this generator (an error or interrupt in the consumer) stops and joins it.
    """
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not put(chunk):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            put(_Done(exc))
            return
        put(_Done())

    producer = threading.Thread(target=produce, name="contacts-import-reader", daemon=True)
    producer.start()
    try:
        while True:
            item = handoff.get()
            if isinstance(item, _Done):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        stop.set()
        producer.join()
        chunks.close()


_Writer = Callable[[Any, ContactList | None, ImportMode, str], _BatchResult]


def _parallel_writers(mode: ImportMode) -> int:
    """How many connections write chunks at once: EDM_IMPORT_WRITERS on PostgreSQL for add
    and upsert, outside any transaction (other connections could not see the caller's
    uncommitted rows, its contact list for one); otherwise 1.
    """
    if (
        connection.vendor != "postgresql"
        or mode not in (ImportMode.ADD_NEW, ImportMode.UPSERT)
        or connection.in_atomic_block
    ):
        return 1
    return max(1, settings.EDM_IMPORT_WRITERS)


class _WriterPool:
    """Threads that write chunks, each through its own database connection.

    ``submit`` blocks while every thread is busy and one chunk waits, so at most
    ``size + 1`` chunks are in memory besides the one being parsed.
    """

    def __init__(self, size: int, writer: _Writer, contact_list, mode, source_label) -> None:
        self._jobs: queue.Queue = queue.Queue(maxsize=1)
        self._write = lambda batch: _write_chunk(writer, batch, contact_list, mode, source_label)
        self._threads = [
            threading.Thread(target=self._serve, name=f"contacts-import-writer-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def _serve(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                future, batch = job
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(self._write(batch))
                    except BaseException as exc:  # raised in the importing thread
                        future.set_exception(exc)
        finally:
            connection.close()  # this thread's own connection

    def submit(self, batch: _Batch) -> Future:
        future: Future = Future()
        self._jobs.put((future, batch))
        return future

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()


def _write_parallel(
    chunks: Iterable[_Chunk],
    size: int,
    writer: _Writer,
    contact_list: ContactList | None,
    mode: ImportMode,
    tally: _Tally,
    source_label: str,
    report: Callable[[], None],
) -> None:
    """Write chunks on ``size`` connections; results are counted in file order.

    Chunks of one file never hold the same address (duplicates are rejected while parsing),
    so concurrent chunks do not wait on each other's rows. On an error, the chunks already
    submitted finish (each commits or rolls back on its own, as in a serial import) and the
    error is raised.
    """
    pool = _WriterPool(size, writer, contact_list, mode, source_label)
    pending: deque[tuple[Future, list[Record]]] = deque()

    def settle() -> None:
        future, rejects = pending.popleft()
        for record in rejects:
            tally.reject(record.line, record.reason, record.detail)
        _count(tally, future.result())
        report()

    try:
        for batch, rejects in chunks:
            pending.append((pool.submit(batch), rejects) if batch else (_done(), rejects))
            while len(pending) > size or (pending and pending[0][0].done()):
                settle()
        while pending:
            settle()
    finally:
        for future, _ in pending:
            future.cancel()
        pool.close()


def _done(result: _BatchResult | None = None) -> Future:
    future: Future = Future()
    future.set_result(result or _BatchResult())
    return future


def _write_chunk(
    writer: _Writer,
    batch: _Batch,
    contact_list: ContactList | None,
    mode: ImportMode,
    source_label: str,
) -> _BatchResult:
    """Write one chunk in its own transaction; a deadlock (two imports of overlapping
    files) rolls the chunk back and it is written again, once."""
    for attempt in (1, 2):
        try:
            with transaction.atomic():
                return writer(batch, contact_list, mode, source_label)
        except OperationalError as exc:
            if attempt == 2 or not _is_deadlock(exc):
                raise
            logger.warning("import chunk deadlocked with another writer; retrying it")
    raise AssertionError("unreachable")


def _is_deadlock(exc: OperationalError) -> bool:
    return getattr(exc.__cause__, "sqlstate", None) == "40P01"


def _count(tally: _Tally, result: _BatchResult) -> None:
    for line in result.suppressed_lines:
        tally.reject(line, RejectReason.SUPPRESSED, "address or domain suppressed")
    tally.created += result.created
    tally.updated += result.updated
    tally.unchanged += result.unchanged


def _write_batch(
    writer: _Writer,
    batch: _Batch,
    contact_list: ContactList | None,
    mode: ImportMode,
    tally: _Tally,
    source_label: str,
) -> None:
    if batch:
        _count(tally, _write_chunk(writer, batch, contact_list, mode, source_label))


def _without_suppressed(batch: list[ContactRow]) -> tuple[list[ContactRow], tuple[int, ...]]:
    """The rows whose address or domain is not suppressed, and the lines of those that are."""
    suppressed = suppression_check(row.email for row in batch)
    if not suppressed:
        return batch, ()
    lines = tuple(row.line for row in batch if row.email in suppressed)
    return [row for row in batch if row.email not in suppressed], lines


def _encoder_for(mode: ImportMode) -> Callable[[list[ContactRow]], _Batch] | None:
    if mode in (ImportMode.ADD_NEW, ImportMode.UPSERT) and connection.vendor == "postgresql":
        return _pg_copy_chunk
    return None


def _writer_for(mode: ImportMode) -> _Writer:
    if mode == ImportMode.UNSUBSCRIBE:
        return _unsubscribe_batch
    if mode == ImportMode.SUPPRESS:
        return _suppress_batch
    if connection.vendor == "postgresql":
        return _add_batch_postgresql
    if connection.vendor == "sqlite":
        return _add_batch_sqlite
    return _add_batch_portable


def _merge(row: ContactRow, name: str, attributes: dict) -> tuple[str, dict]:
    """Upsert rule: a non-empty name replaces; attributes merge, the file's values winning."""
    merged_attributes = {**attributes, **row.attributes} if row.attributes else attributes
    return (row.name or name), merged_attributes


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _db_key(email: str) -> str:
    """The address as the database's lower() sees it (SQLite's lower() is ASCII-only)."""
    if connection.vendor == "sqlite":
        return email.translate(_ASCII_LOWER)
    return email.lower()


def _add_batch_portable(
    batch: list[ContactRow], contact_list: ContactList | None, mode: ImportMode, source: str
) -> _BatchResult:
    """Add or upsert with one SELECT of existing addresses, then bulk insert and update."""
    batch, suppressed_lines = _without_suppressed(batch)
    if not batch:
        return _BatchResult(suppressed_lines=suppressed_lines)
    keys = [_db_key(row.email) for row in batch]
    existing = {
        contact.email_key: contact
        for contact in contacts_by_keys(keys).only("id", "email", "name", "attributes")
    }
    now = timezone.now()
    new_rows = [row for row, key in zip(batch, keys, strict=True) if key not in existing]
    Contact.objects.bulk_create(
        [Contact(email=row.email, name=row.name, attributes=row.attributes) for row in new_rows],
        ignore_conflicts=True,  # a concurrent import of the same address wins; we match it next
    )
    updated = unchanged = 0
    changed: list[Contact] = []
    for row, key in zip(batch, keys, strict=True):
        contact = existing.get(key)
        if contact is None:
            continue
        if mode == ImportMode.UPSERT:
            name, attributes = _merge(row, contact.name, contact.attributes or {})
            if name != contact.name or attributes != contact.attributes:
                contact.name, contact.attributes, contact.updated_at = name, attributes, now
                changed.append(contact)
                continue
        unchanged += 1
    if changed:
        Contact.objects.bulk_update(changed, ["name", "attributes", "updated_at"])
        updated = len(changed)
    ids = dict(contacts_by_keys(keys).values_list("email_key", "id"))
    created = sum(1 for row in new_rows if _db_key(row.email) in ids)
    Subscription.objects.bulk_create(
        [
            Subscription(
                contact_id=contact_id,
                contact_list=contact_list,
                status=SubscriptionStatus.SUBSCRIBED,
                source=source or IMPORT_SOURCE,
            )
            for contact_id in ids.values()
        ],
        ignore_conflicts=True,  # an existing subscription (even unsubscribed) is left alone
    )
    # A row whose insert lost a race to another writer counts as unchanged.
    return _BatchResult(
        created=created,
        updated=updated,
        unchanged=unchanged + len(new_rows) - created,
        suppressed_lines=suppressed_lines,
    )


_SQLITE_STAGE = "skylark_import_stage"


def _add_batch_sqlite(
    batch: list[ContactRow], contact_list: ContactList | None, mode: ImportMode, source: str
) -> _BatchResult:
    """Add or upsert through a temporary table and set-based statements (SQLite >= 3.33).

    The ORM's bulk_create spends most of its time preparing values; these four statements
    do the same work several times faster. CROSS JOIN fixes the join order and the unary
    plus drops the TEXT affinity of the staged key, without which SQLite cannot use the
    lower(email) index and scans every contact for every chunk. Attributes are staged as Django stores them
    (ASCII-escaped JSON) so json_patch() gives identical text when nothing changed.
    """
    batch, suppressed_lines = _without_suppressed(batch)
    if not batch:
        return _BatchResult(suppressed_lines=suppressed_lines)
    contact_table = Contact._meta.db_table
    subscription_table = Subscription._meta.db_table
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_SQLITE_STAGE} (email TEXT NOT NULL,"
            " email_key TEXT PRIMARY KEY, name TEXT NOT NULL, attributes TEXT NOT NULL)"
        )
        cursor.execute(f"DELETE FROM {_SQLITE_STAGE}")
        dumps = json.dumps
        cursor.executemany(
            f"INSERT INTO {_SQLITE_STAGE} (email, email_key, name, attributes)"
            " VALUES (%s, %s, %s, %s)",
            [(row.email, _db_key(row.email), row.name, dumps(row.attributes)) for row in batch],
        )
        updated = 0
        if mode == ImportMode.UPSERT:
            cursor.execute(
                f"""
                UPDATE {contact_table}
                SET name = (
                        SELECT CASE WHEN s.name <> '' THEN s.name ELSE {contact_table}.name END
                        FROM {_SQLITE_STAGE} AS s
                        WHERE s.email_key = lower({contact_table}.email)),
                    attributes = (
                        SELECT json_patch({contact_table}.attributes, s.attributes)
                        FROM {_SQLITE_STAGE} AS s
                        WHERE s.email_key = lower({contact_table}.email)),
                    updated_at = %s
                WHERE id IN (
                    SELECT c.id
                    FROM {_SQLITE_STAGE} AS s
                    CROSS JOIN {contact_table} AS c ON lower(c.email) = +s.email_key
                    WHERE c.name IS NOT (CASE WHEN s.name <> '' THEN s.name ELSE c.name END)
                       OR json(c.attributes) IS NOT json_patch(c.attributes, s.attributes))
                """,
                [now],
            )
            updated = cursor.rowcount
        # "WHERE true" resolves SQLite's parsing ambiguity between SELECT and ON CONFLICT.
        cursor.execute(
            f"""
            INSERT INTO {contact_table} (email, name, attributes, status, created_at, updated_at)
            SELECT email, name, attributes, 'active', %s, %s FROM {_SQLITE_STAGE} WHERE true
            ON CONFLICT DO NOTHING
            """,
            [now, now],
        )
        created = cursor.rowcount
        cursor.execute(
            f"""
            INSERT INTO {subscription_table}
                (contact_id, contact_list_id, status, source, created_at, updated_at)
            SELECT c.id, %s, %s, %s, %s, %s
            FROM {_SQLITE_STAGE} AS s
            CROSS JOIN {contact_table} AS c ON lower(c.email) = +s.email_key
            WHERE true
            ON CONFLICT DO NOTHING
            """,
            [
                contact_list.pk,
                SubscriptionStatus.SUBSCRIBED.value,
                source or IMPORT_SOURCE,
                now,
                now,
            ],
        )
        cursor.execute(f"DELETE FROM {_SQLITE_STAGE}")
    return _BatchResult(
        created=created,
        updated=updated,
        unchanged=len(batch) - created - updated,
        suppressed_lines=suppressed_lines,
    )


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


def _pg_copy_chunk(batch: list[ContactRow]) -> _CopyChunk:
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
    return _CopyChunk(rows=len(batch), data="\n".join(lines).encode(), domains=frozenset(domains))


def _add_batch_postgresql(
    batch: _CopyChunk, contact_list: ContactList | None, mode: ImportMode, source: str
) -> _BatchResult:
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
            return _BatchResult(suppressed_lines=suppressed_lines)
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
    return _BatchResult(
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


def _unsubscribe_batch(
    batch: list[ContactRow], contact_list: ContactList | None, mode: ImportMode, source: str
) -> _BatchResult:
    """Mark the list subscriptions of these addresses unsubscribed; nothing is created."""
    contact_ids = list(
        contacts_by_keys(_db_key(row.email) for row in batch).values_list("id", flat=True)
    )
    updated = (
        Subscription.objects.filter(contact_list=contact_list, contact_id__in=contact_ids)
        .exclude(status=SubscriptionStatus.UNSUBSCRIBED)
        .update(status=SubscriptionStatus.UNSUBSCRIBED, updated_at=timezone.now())
    )
    return _BatchResult(updated=updated, unchanged=len(batch) - updated)


def _suppress_batch(
    batch: list[ContactRow], contact_list: ContactList | None, mode: ImportMode, source: str
) -> _BatchResult:
    """Add the addresses to the suppression list (reason import)."""
    values = [row.email.lower() for row in batch]
    already = set(
        Suppression.objects.filter(scope=SuppressionScope.ADDRESS, value__in=values).values_list(
            "value", flat=True
        )
    )
    Suppression.objects.bulk_create(
        [
            Suppression(
                value=value,
                scope=SuppressionScope.ADDRESS,
                reason=SuppressionReason.IMPORT,
                source=(source or IMPORT_SOURCE)[:200],
            )
            for value in values
            if value not in already
        ],
        ignore_conflicts=True,
    )
    created = len(values) - len(already)
    return _BatchResult(created=created, unchanged=len(already))


# -- import jobs ----------------------------------------------------------------------------


def import_job_create(
    *,
    file: Any,
    original_name: str,
    contact_list: ContactList | None,
    mode: ImportMode | str,
    encoding: str = "auto",
    mapping: dict[str, str] | None = None,
    options: dict | None = None,
) -> ImportJob:
    """Store an uploaded file as a pending ImportJob (the caller enqueues it)."""
    job = ImportJob(
        original_name=original_name[:255],
        contact_list=contact_list,
        mode=ImportMode(mode),
        encoding=encoding or "auto",
        mapping=mapping or {},
        options=options or {},
    )
    job.file.save(os.path.basename(original_name) or "import.csv", file, save=False)
    job.save()
    return job


def import_job_start(*, job: ImportJob) -> ImportJob:
    """Enqueue the job's import after the current transaction commits."""
    from contacts.tasks import import_job

    import_job.delay_on_commit(job.pk)
    return job


def contacts_statistics_refresh(*, summary: ImportSummary) -> bool:
    """After a large import on PostgreSQL, refresh the planner's statistics of contacts and
    subscriptions; True if done.

    Autovacuum would do it within a minute or so (never where it is turned off), but a
    campaign sent right after the import is planned on the statistics of the table as it was
    before: a list that grew from nothing to 200,000 looks empty, and the wrong index is
    cheap-looking. ANALYZE reads a sample (~30,000 rows per table): well under a second.
    """
    if connection.vendor != "postgresql" or summary.created + summary.updated < ANALYZE_AFTER_ROWS:
        return False
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Contact._meta.db_table}, {Subscription._meta.db_table}")
    return True


def import_job_run(*, job_id: int) -> None:
    """Run a pending or interrupted ImportJob and record its progress and outcome on the row.

    Safe to run twice (a redelivered task): a finished job is left alone, an interrupted one
    is imported again from the start, which the import's idempotency makes harmless.
    """
    from contacts.errors import ContactsError
    from contacts.models import ImportStatus

    job = ImportJob.objects.select_related("contact_list").get(pk=job_id)
    if job.status == ImportStatus.DONE:
        return
    started = timezone.now()
    ImportJob.objects.filter(pk=job.pk).update(
        status=ImportStatus.RUNNING, started_at=started, finished_at=None, error=""
    )
    last_saved = [0.0]

    def save_progress(progress: ImportProgress) -> None:
        now = time.monotonic()
        if now - last_saved[0] < 0.5 and progress.bytes_read != progress.bytes_total:
            return
        last_saved[0] = now
        estimated_total = progress.processed_rows
        if progress.bytes_total and progress.bytes_read:
            fraction = min(1.0, progress.bytes_read / progress.bytes_total)
            if fraction > 0:
                estimated_total = max(
                    progress.processed_rows, int(progress.processed_rows / fraction)
                )
        ImportJob.objects.filter(pk=job.pk).update(
            processed_rows=progress.processed_rows,
            total_rows=estimated_total,
            created_count=progress.created,
            updated_count=progress.updated,
            unchanged_count=progress.unchanged,
            rejected_count=progress.rejected,
            rejected_by_reason=progress.rejected_by_reason,
            detected_encoding=progress.encoding,
            detected_delimiter=progress.delimiter or "",
        )

    options = job.options or {}
    try:
        with job.file.open("rb") as handle:
            summary = contacts_import(
                source=handle,
                contact_list=job.contact_list,
                mode=job.mode,
                encoding=job.encoding,
                mapping=job.mapping or None,
                job=job,
                on_progress=save_progress,
                reject_role=bool(options.get("reject_role")),
                reject_disposable=bool(options.get("reject_disposable")),
                source_label=f"import #{job.pk} {job.original_name}"[:100],
            )
    except ContactsError as exc:
        ImportJob.objects.filter(pk=job.pk).update(
            status=ImportStatus.FAILED, error=str(exc), finished_at=timezone.now()
        )
        return
    except Exception as exc:
        ImportJob.objects.filter(pk=job.pk).update(
            status=ImportStatus.FAILED,
            error=f"{type(exc).__name__}: {exc}",
            finished_at=timezone.now(),
        )
        raise
    ImportJob.objects.filter(pk=job.pk).update(
        status=ImportStatus.DONE,
        processed_rows=summary.total,
        total_rows=summary.total,
        created_count=summary.created,
        updated_count=summary.updated,
        unchanged_count=summary.unchanged,
        rejected_count=summary.rejected,
        rejected_by_reason=summary.rejected_by_reason,
        rejected_rows=[
            {"line": line, "reason": reason, "detail": detail}
            for line, reason, detail in summary.rejected_rows
        ],
        detected_encoding=summary.encoding,
        detected_delimiter=summary.delimiter or "",
        finished_at=timezone.now(),
    )
    contacts_statistics_refresh(summary=summary)


# -- suppressions ---------------------------------------------------------------------------


def suppression_add(
    *, value: str, reason: SuppressionReason | str, source: str = ""
) -> Suppression:
    """Suppress an address (``a@b.example``) or a whole domain (``b.example``); idempotent."""
    value = value.strip()
    if "@" in value:
        scope = SuppressionScope.ADDRESS
        try:
            normalized = normalize_email(value).lower()
        except InvalidEmail as exc:
            raise ImportConfigError(f"not a valid address: {exc.detail}") from None
    else:
        scope = SuppressionScope.DOMAIN
        try:
            normalized = normalize_email(f"x@{value.lstrip('@')}").rpartition("@")[2]
        except InvalidEmail as exc:
            raise ImportConfigError(f"not a valid domain: {exc.detail}") from None
    suppression, _ = Suppression.objects.get_or_create(
        value=normalized,
        scope=scope,
        defaults={"reason": SuppressionReason(reason), "source": source[:200]},
    )
    return suppression


def suppression_remove(*, suppression: Suppression) -> None:
    """Lift a suppression (a manual admin decision)."""
    suppression.delete()


# -- export ---------------------------------------------------------------------------------

_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralize_cell(value: object) -> str:
    """Text safe to open in a spreadsheet: a leading apostrophe defuses formula injection."""
    text = "" if value is None else str(value)
    if text.startswith(_FORMULA_PREFIXES):
        return "'" + text
    return text


def contacts_export(*, contact_list: ContactList, output: IO[str]) -> int:
    """Write the list as CSV (UTF-8 with BOM, formula-neutralized) to ``output``; row count.

    Attribute keys are collected first so every attribute gets its own column.
    """
    keys: set[str] = set()
    for row in contacts_export_rows(contact_list=contact_list):
        keys.update(row["attributes"])
    attribute_keys = sorted(keys)
    output.write("\ufeff")
    writer = csv.writer(output, lineterminator="\r\n")
    writer.writerow(["email", "name", "status", "subscription", *attribute_keys])
    count = 0
    for row in contacts_export_rows(contact_list=contact_list):
        attributes = row["attributes"]
        writer.writerow(
            [
                neutralize_cell(row["email"]),
                neutralize_cell(row["name"]),
                row["status"],
                row["subscription"],
                *(neutralize_cell(attributes.get(key, "")) for key in attribute_keys),
            ]
        )
        count += 1
    return count


def contact_list_get_or_create(*, name: str) -> ContactList:
    """The list with this name, created if missing."""
    contact_list, _ = ContactList.objects.get_or_create(name=name)
    return contact_list


def rejected_rows_csv(*, rows: Iterable[dict], output: IO[str]) -> None:
    """Write an import's rejected rows (line, reason, detail) as CSV."""
    output.write("\ufeff")
    writer = csv.writer(output, lineterminator="\r\n")
    writer.writerow(["line", "reason", "detail"])
    for row in rows:
        writer.writerow(
            [row.get("line"), row.get("reason"), neutralize_cell(row.get("detail", ""))]
        )
