"""Segment count preview on PostgreSQL: time segment_preview over N contacts, print EXPLAIN ANALYZE.

    createdb -h 127.0.0.1 -U postgres skylark_segment_bench
    python bench/segment_count.py [--contacts 1000000] [--explain]

Uses its own scratch database (DATABASE_URL defaults to .../skylark_segment_bench), migrates
it, and writes the contacts with one INSERT ... SELECT from generate_series when the table does
not hold --contacts rows yet (so a second run reuses the data). Never point it at a database
whose contacts you care about. Each rule set is run --repeat times; the median is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/skylark_segment_bench"
CITIES = [
    "Paris",
    "Berlin",
    "London",
    "Madrid",
    "Rome",
    "Oslo",
    "Vienna",
    "Prague",
    "Dublin",
    "Lyon",
]


def populate(connection, contacts: int, list_ids: list[int]) -> None:
    """Contacts with attributes (city, plan, age as text, joined as ISO date), and subscriptions:
    every 2nd contact on list A, every 3rd on list B (a tenth of B unsubscribed)."""
    cities = "ARRAY[" + ",".join(f"'{c}'" for c in CITIES) + "]"
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE contacts_contact CASCADE")
        cursor.execute(
            f"""
            INSERT INTO contacts_contact (email, name, attributes, status, created_at, updated_at)
            SELECT 'user' || i || '@example' || (i %% 500) || '.com',
                   'User ' || i,
                   jsonb_build_object(
                       'city', ({cities})[1 + i %% 10],
                       'plan', CASE WHEN i %% 7 = 0 THEN 'pro' ELSE 'free' END,
                       'age', ((18 + i %% 60))::text,
                       'joined', to_char(date '2020-01-01' + (i %% 2000), 'YYYY-MM-DD')
                   ),
                   CASE WHEN i %% 50 = 0 THEN 'unsubscribed' ELSE 'active' END,
                   now() - make_interval(days => i %% 1000),
                   now()
            FROM generate_series(1, %s) AS i
            """,  # noqa: S608 - constants only
            [contacts],
        )
        cursor.execute(
            """
            INSERT INTO contacts_subscription
                (contact_id, contact_list_id, status, source, created_at, updated_at)
            SELECT id, %s, 'subscribed', 'bench', created_at, now()
            FROM contacts_contact WHERE id %% 2 = 0
            """,
            [list_ids[0]],
        )
        cursor.execute(
            """
            INSERT INTO contacts_subscription
                (contact_id, contact_list_id, status, source, created_at, updated_at)
            SELECT id, %s, CASE WHEN id %% 30 = 0 THEN 'unsubscribed' ELSE 'subscribed' END,
                   'bench', created_at, now()
            FROM contacts_contact WHERE id %% 3 = 0
            """,
            [list_ids[1]],
        )
        cursor.execute("VACUUM ANALYZE contacts_contact")
        cursor.execute("VACUUM ANALYZE contacts_subscription")


def rule_sets(list_a: int, list_b: int) -> dict[str, tuple[str, list[dict]]]:
    return {
        "city = Paris": ("all", [{"field": "attributes.city", "op": "eq", "value": "Paris"}]),
        "city = Paris and plan = pro": (
            "all",
            [
                {"field": "attributes.city", "op": "eq", "value": "Paris"},
                {"field": "attributes.plan", "op": "eq", "value": "pro"},
            ],
        ),
        "age >= 40": ("all", [{"field": "attributes.age", "op": "gte", "value": 40}]),
        "city contains 'ar'": (
            "all",
            [{"field": "attributes.city", "op": "contains", "value": "ar"}],
        ),
        "joined after 2024-06-01 (ISO string)": (
            "all",
            [{"field": "attributes.joined", "op": "after", "value": "2024-06-01"}],
        ),
        "email ends with @example7.com": (
            "all",
            [{"field": "email", "op": "ends_with", "value": "@example7.com"}],
        ),
        "in list A and not in list B": (
            "all",
            [
                {"field": "list", "op": "in", "value": list_a},
                {"field": "list", "op": "not_in", "value": list_b},
            ],
        ),
        "city = Paris and subscribed to A in the last 90 days": (
            "all",
            [
                {"field": "attributes.city", "op": "eq", "value": "Paris"},
                {"field": "subscribed_at", "op": "within_days", "value": 90, "list": list_a},
            ],
        ),
        "any of: city = Oslo, age < 20, created within 30 days": (
            "any",
            [
                {"field": "attributes.city", "op": "eq", "value": "Oslo"},
                {"field": "attributes.age", "op": "lt", "value": 20},
                {"field": "created_at", "op": "within_days", "value": 30},
            ],
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE per query")
    parser.add_argument("--repopulate", action="store_true")
    args = parser.parse_args()

    os.environ.setdefault("DATABASE_URL", DEFAULT_URL)
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from contacts.models import Contact, ContactList
    from contacts.segments import segment_preview

    if connection.vendor != "postgresql":
        sys.exit("This bench is for PostgreSQL (set DATABASE_URL).")
    call_command("migrate", verbosity=0)
    list_a, _ = ContactList.objects.get_or_create(name="bench A")
    list_b, _ = ContactList.objects.get_or_create(name="bench B")
    if args.repopulate or Contact.objects.count() != args.contacts:
        started = time.perf_counter()
        populate(connection, args.contacts, [list_a.pk, list_b.pk])
        print(f"populated {args.contacts} contacts in {time.perf_counter() - started:.1f} s")
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        print(cursor.fetchone()[0].split(",")[0])
        cursor.execute("SHOW max_parallel_workers_per_gather")
        print("max_parallel_workers_per_gather =", cursor.fetchone()[0])
    print(f"{'segment':58} {'count':>9} {'active':>9} {'median ms':>10} {'max ms':>8}")
    for label, (match, rules) in rule_sets(list_a.pk, list_b.pk).items():
        timings = []
        result = {}
        for _ in range(args.repeat):
            started = time.perf_counter()
            result = segment_preview(rules=rules, match=match)
            timings.append((time.perf_counter() - started) * 1000)
        print(
            f"{label:58} {result['count']:>9} {result['active']:>9} "
            f"{statistics.median(timings):>10.0f} {max(timings):>8.0f}"
        )
        if args.explain:
            print(_explain(connection, rules, match))


def _explain(connection, rules: list[dict], match: str) -> str:
    """EXPLAIN ANALYZE of the count query segment_preview runs (captured, then re-run)."""
    from django.test.utils import CaptureQueriesContext

    from contacts.segments import segment_preview

    with CaptureQueriesContext(connection) as captured:
        segment_preview(rules=rules, match=match, sample_size=0)
    count_sql = next(q["sql"] for q in captured.captured_queries if "COUNT(" in q["sql"])
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + count_sql)
        return "\n".join("    " + row[0] for row in cursor.fetchall())


if __name__ == "__main__":
    main()
