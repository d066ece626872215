"""Import jobs: an uploaded file stored, enqueued, run with its progress, and its report."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Iterable
from typing import IO, Any

from django.db import connection
from django.utils import timezone

from contacts.errors import ContactsError
from contacts.imports.engine import ImportProgress, ImportSummary, contacts_import
from contacts.models import Contact, ContactList, ImportJob, ImportMode, ImportStatus, Subscription
from contacts.services import neutralize_cell

# An import that creates or updates this many contacts refreshes the planner's statistics.
ANALYZE_AFTER_ROWS = 10_000


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


def rejected_rows_csv(*, rows: Iterable[dict], output: IO[str]) -> None:
    """Write an import's rejected rows (line, reason, detail) as CSV."""
    output.write("\ufeff")
    writer = csv.writer(output, lineterminator="\r\n")
    writer.writerow(["line", "reason", "detail"])
    for row in rows:
        writer.writerow(
            [row.get("line"), row.get("reason"), neutralize_cell(row.get("detail", ""))]
        )
