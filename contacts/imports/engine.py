"""contacts_import: a contact file read, chunked and written, every row counted once."""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future
from contextlib import closing
from dataclasses import dataclass, field
from typing import IO, Any

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.utils.translation import gettext as _

from contacts.errors import ImportConfigError, ImportFileError
from contacts.imports.csvparse import (
    ContactFileReader,
    ContactRow,
    Record,
    contact_rows,
    plan_columns,
)
from contacts.imports.postgresql import CopyChunk, add_batch_postgresql, pg_copy_chunk
from contacts.imports.writers import (
    BatchResult,
    add_batch_portable,
    add_batch_sqlite,
    suppress_batch,
    unsubscribe_batch,
)
from contacts.models import ContactList, ImportJob, ImportMode
from contacts.normalize import EmailPolicy, RejectReason

logger = logging.getLogger(__name__)


# Rejected rows kept in a summary (and on the ImportJob row); counts by reason are always
# complete. Bounds memory for a file that is nothing but garbage.
REJECTED_ROWS_LIMIT = 10_000


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


# COPY pays off with big chunks: 50,000 rows cost one round trip per statement and a few MB of
# client memory. Used for add/upsert on PostgreSQL when no batch size is given.
POSTGRESQL_BATCH_SIZE = 50_000


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


_Batch = list[ContactRow] | CopyChunk
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
    seen = rejected = 0
    max_rows, max_rejected = settings.EDM_IMPORT_MAX_ROWS, settings.EDM_IMPORT_MAX_REJECTED_ROWS
    for item in items:
        seen += 1
        if isinstance(item, Record):
            rejects.append(item)
            rejected += 1
            # A file that is mostly refused rows is not a contact list (an unclosed quote
            # before 100 M short lines cost minutes): stop, rather than reject row by row.
            if rejected > max_rejected and rejected * 2 > seen:
                raise ImportFileError(
                    _(
                        "More than %(limit)s rows of this file were refused: it does not look "
                        "like a contact list. Check the file's format."
                    )
                    % {"limit": max_rejected}
                )
        else:
            batch.append(item)
        if seen > max_rows:
            raise ImportFileError(
                _("The file has more than %(limit)s rows; split it into several imports.")
                % {"limit": max_rows}
            )
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


_Writer = Callable[[Any, ContactList | None, ImportMode, str], BatchResult]


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
        for _thread in self._threads:
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


def _done(result: BatchResult | None = None) -> Future:
    future: Future = Future()
    future.set_result(result or BatchResult())
    return future


def _write_chunk(
    writer: _Writer,
    batch: _Batch,
    contact_list: ContactList | None,
    mode: ImportMode,
    source_label: str,
) -> BatchResult:
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


def _count(tally: _Tally, result: BatchResult) -> None:
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


def _encoder_for(mode: ImportMode) -> Callable[[list[ContactRow]], _Batch] | None:
    if mode in (ImportMode.ADD_NEW, ImportMode.UPSERT) and connection.vendor == "postgresql":
        return pg_copy_chunk
    return None


def _writer_for(mode: ImportMode) -> _Writer:
    if mode == ImportMode.UNSUBSCRIBE:
        return unsubscribe_batch
    if mode == ImportMode.SUPPRESS:
        return suppress_batch
    if connection.vendor == "postgresql":
        return add_batch_postgresql
    if connection.vendor == "sqlite":
        return add_batch_sqlite
    return add_batch_portable
