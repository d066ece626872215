"""The import engine: contact files read (csvparse, xlsxparse), chunked, written set-based."""

from contacts.imports.engine import (
    POSTGRESQL_BATCH_SIZE,
    REJECTED_ROWS_LIMIT,
    ImportProgress,
    ImportSummary,
    contacts_import,
)
from contacts.imports.jobs import (
    ANALYZE_AFTER_ROWS,
    contacts_statistics_refresh,
    import_job_create,
    import_job_run,
    import_job_start,
    rejected_rows_csv,
)
from contacts.imports.writers import IMPORT_SOURCE

__all__ = [
    "ANALYZE_AFTER_ROWS",
    "IMPORT_SOURCE",
    "POSTGRESQL_BATCH_SIZE",
    "REJECTED_ROWS_LIMIT",
    "ImportProgress",
    "ImportSummary",
    "contacts_import",
    "contacts_statistics_refresh",
    "import_job_create",
    "import_job_run",
    "import_job_start",
    "rejected_rows_csv",
]
