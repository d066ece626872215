"""Import throughput: write a CSV, import it through contacts_import, print rows/s and peak RSS.

    python bench/import_throughput.py [--rows 1000000]                  # scratch SQLite file
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test python bench/import_throughput.py

The database is migrated first and the bench's list and contacts (addresses starting with
"bench") are deleted before the run, with raw SQL that ignores other tables referencing them.
Never point it at a database whose contacts you care about.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_csv(path: Path, rows: int) -> None:
    cities = ["北京", "上海", "Paris", "Berlin", "深圳"]
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name", "city", "plan"])
        for i in range(rows):
            writer.writerow([f"bench{i}@example{i % 97}.com", f"User {i}", cities[i % 5], "pro"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="skylark-import-bench-"))
    try:
        run(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # a 1M-row run leaves ~0.5 GB otherwise


def run(args: argparse.Namespace, scratch: Path) -> None:
    if not os.environ.get("DATABASE_URL"):
        os.environ["EDM_SQLITE_PATH"] = str(scratch / "bench.sqlite3")
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from contacts.imports import contacts_import
    from contacts.models import Contact, ContactList, ImportMode, Subscription

    call_command("migrate", verbosity=0)
    # Raw deletes: QuerySet.delete() collects every related object in memory first, which
    # after a 10^6-row run costs gigabytes of RSS and used to be mistaken for the import's.
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {Subscription._meta.db_table} WHERE contact_id IN"
            f" (SELECT id FROM {Contact._meta.db_table} WHERE email LIKE 'bench%%')"
        )
        cursor.execute(f"DELETE FROM {Contact._meta.db_table} WHERE email LIKE 'bench%%'")
    ContactList.objects.filter(name="bench").delete()
    contact_list = ContactList.objects.create(name="bench")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM ANALYZE {Contact._meta.db_table}")
            cursor.execute(f"VACUUM ANALYZE {Subscription._meta.db_table}")
    rss_before = _rss_mb()

    path = scratch / "bench.csv"
    started = time.perf_counter()
    write_csv(path, args.rows)
    print(
        f"wrote {args.rows} rows ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - started:.1f}s"
    )

    print(f"load average before: {_load()}")
    for label in ("first import (all new)", "re-import (all unchanged)"):
        started = time.perf_counter()
        summary = contacts_import(
            source=path,
            contact_list=contact_list,
            mode=ImportMode.UPSERT,
            batch_size=args.batch_size,
        )
        elapsed = time.perf_counter() - started
        print(
            f"{connection.vendor} {label}: {summary.total} rows in {elapsed:.1f}s = "
            f"{summary.total / elapsed:,.0f} rows/s (created {summary.created}, "
            f"unchanged {summary.unchanged}, rejected {summary.rejected}); "
            f"load average {_load()}"
        )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"peak RSS {peak_mb:.0f} MB (RSS {rss_before:.0f} MB before the first import)")


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
