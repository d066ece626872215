"""contacts_import: every mode, idempotency, suppression, status safety (SQLite and PostgreSQL)."""

from __future__ import annotations

import os

import pytest
from django.db import connection

from contacts.errors import ImportConfigError
from contacts.imports import contacts_import
from contacts.models import (
    Contact,
    ContactStatus,
    ImportMode,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
    SuppressionScope,
)
from contacts.selectors import suppression_check
from contacts.services import suppression_add
from tests.factories import ContactFactory, ContactListFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db

FILE = (
    "email,name,city\n"
    "ann@example.com,Ann,Paris\n"  # 2
    "Bob@Example.com,Bob,\n"  # 3
    "not-an-email,X,\n"  # 4
    "BOB@example.com,Bob again,\n"  # 5: duplicate of line 3
    ",nobody,\n"  # 6: missing email
    "张伟@例子.中国,张伟,北京\n"  # 7
)


def run(path, contact_list, mode, **kwargs):
    return contacts_import(source=path, contact_list=contact_list, mode=mode, **kwargs)


def test_add_new_creates_contacts_and_reports_every_rejected_row(write_file):
    path = write_file(FILE)
    contact_list = ContactListFactory(name="Newsletter")
    summary = run(path, contact_list, ImportMode.ADD_NEW, batch_size=2)
    assert (
        summary.created,
        summary.updated,
        summary.unchanged,
        summary.rejected,
        summary.total,
    ) == (
        3,
        0,
        0,
        3,
        6,
    )
    assert summary.rejected_by_reason == {
        "duplicate_in_file": 1,
        "invalid_email": 1,
        "missing_email": 1,
    }
    assert [(line, reason) for line, reason, _ in summary.rejected_rows] == [
        (4, "invalid_email"),
        (5, "duplicate_in_file"),
        (6, "missing_email"),
    ]
    assert summary.rejected_rows[1][2] == "same address as line 3"
    assert sorted(Contact.objects.values_list("email", flat=True)) == [
        "Bob@example.com",
        "ann@example.com",
        "张伟@例子.中国",
    ]
    assert Contact.objects.get(email="ann@example.com").attributes == {"city": "Paris"}
    assert Subscription.objects.filter(contact_list=contact_list, status="subscribed").count() == 3


def test_rerunning_the_same_file_is_idempotent(write_file):
    path = write_file(FILE)
    contact_list = ContactListFactory()
    first = run(path, contact_list, ImportMode.UPSERT, batch_size=2)
    second = run(path, contact_list, ImportMode.UPSERT, batch_size=2)
    assert (first.created, first.updated, first.unchanged, first.rejected) == (3, 0, 0, 3)
    assert (second.created, second.updated, second.unchanged, second.rejected) == (0, 0, 3, 3)
    assert Contact.objects.count() == 3
    assert Subscription.objects.count() == 3


def test_import_interrupted_half_way_and_rerun_ends_with_the_same_contacts(write_file):
    rows = "".join(f"user{i}@example.com,User {i}\n" for i in range(10))
    path = write_file("email,name\n" + rows)
    contact_list = ContactListFactory()
    calls = []

    def crash_after_first_chunk(progress):
        calls.append(progress.processed_rows)
        if progress.processed_rows >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(
            path, contact_list, ImportMode.UPSERT, batch_size=4, on_progress=crash_after_first_chunk
        )
    assert Contact.objects.count() == 4  # the committed first chunk
    summary = run(path, contact_list, ImportMode.UPSERT, batch_size=4)
    assert (summary.created, summary.unchanged) == (6, 4)
    assert Contact.objects.count() == 10
    assert Subscription.objects.filter(contact_list=contact_list).count() == 10


def test_existing_contact_matched_case_insensitively(write_file):
    ContactFactory(email="Ann@example.com", name="Old")
    contact_list = ContactListFactory()
    summary = run(write_file("email,name\nANN@EXAMPLE.COM,New\n"), contact_list, ImportMode.ADD_NEW)
    assert (summary.created, summary.unchanged) == (0, 1)
    contact = Contact.objects.get()
    assert (contact.email, contact.name) == ("Ann@example.com", "Old")
    assert contact.subscriptions.get().contact_list == contact_list


def test_add_new_leaves_existing_contacts_unchanged_but_subscribes_them(write_file):
    ContactFactory(email="ann@example.com", name="Ann", attributes={"plan": "free"})
    contact_list = ContactListFactory()
    summary = run(
        write_file("email,name,plan\nann@example.com,Annie,pro\nnew@example.com,New,free\n"),
        contact_list,
        ImportMode.ADD_NEW,
    )
    assert (summary.created, summary.updated, summary.unchanged) == (1, 0, 1)
    ann = Contact.objects.get(email="ann@example.com")
    assert (ann.name, ann.attributes) == ("Ann", {"plan": "free"})
    assert set(contact_list.contacts.values_list("email", flat=True)) == {
        "ann@example.com",
        "new@example.com",
    }


def test_upsert_merges_name_and_attributes(write_file):
    ContactFactory(email="ann@example.com", name="Ann", attributes={"plan": "free", "city": "Rome"})
    ContactFactory(email="same@example.com", name="Same", attributes={"plan": "pro"})
    contact_list = ContactListFactory()
    summary = run(
        write_file("email,name,plan\nann@example.com,,pro\nsame@example.com,Same,pro\n"),
        contact_list,
        ImportMode.UPSERT,
    )
    assert (summary.created, summary.updated, summary.unchanged) == (0, 1, 1)
    ann = Contact.objects.get(email="ann@example.com")
    assert (ann.name, ann.attributes) == ("Ann", {"plan": "pro", "city": "Rome"})


def test_import_never_reactivates_unsubscribed_or_bounced_contacts(write_file):
    contact_list = ContactListFactory()
    gone = ContactFactory(email="gone@example.com", status=ContactStatus.UNSUBSCRIBED)
    ContactFactory(email="bounced@example.com", status=ContactStatus.BOUNCED)
    SubscriptionFactory(
        contact=gone, contact_list=contact_list, status=SubscriptionStatus.UNSUBSCRIBED
    )
    summary = run(
        write_file("email,name\ngone@example.com,G\nbounced@example.com,B\n"),
        contact_list,
        ImportMode.UPSERT,
    )
    assert (summary.created, summary.updated) == (0, 2)  # names set, statuses untouched
    assert dict(Contact.objects.values_list("email", "status")) == {
        "gone@example.com": "unsubscribed",
        "bounced@example.com": "bounced",
    }
    assert Subscription.objects.get(contact=gone).status == SubscriptionStatus.UNSUBSCRIBED


def test_unsubscribe_mode_unsubscribes_from_the_list_only(write_file):
    contact_list = ContactListFactory()
    other = ContactListFactory()
    ann = SubscriptionFactory(contact__email="ann@example.com", contact_list=contact_list).contact
    SubscriptionFactory(contact=ann, contact_list=other)
    SubscriptionFactory(contact__email="bob@example.com", contact_list=contact_list)
    summary = run(
        write_file("email\nANN@example.com\nstranger@example.com\nbroken\n"),
        contact_list,
        ImportMode.UNSUBSCRIBE,
    )
    assert (summary.created, summary.updated, summary.unchanged, summary.rejected) == (0, 1, 1, 1)
    assert Subscription.objects.get(contact=ann, contact_list=contact_list).status == "unsubscribed"
    assert Subscription.objects.get(contact=ann, contact_list=other).status == "subscribed"
    assert Subscription.objects.get(contact__email="bob@example.com").status == "subscribed"
    assert Contact.objects.count() == 2


def test_unsubscribe_mode_needs_a_list(write_file):
    with pytest.raises(ImportConfigError):
        run(write_file("email\na@example.com\n"), None, ImportMode.UNSUBSCRIBE)


def test_suppress_mode_adds_suppressions_idempotently(write_file):
    path = write_file("email\nA@Example.com\nb@example.com\nbad\n")
    first = run(path, None, ImportMode.SUPPRESS)
    second = run(path, None, ImportMode.SUPPRESS)
    assert (first.created, first.unchanged, first.rejected) == (2, 0, 1)
    assert (second.created, second.unchanged, second.rejected) == (0, 2, 1)
    assert sorted(Suppression.objects.values_list("value", "scope", "reason")) == [
        ("a@example.com", "address", "import"),
        ("b@example.com", "address", "import"),
    ]
    assert Contact.objects.count() == 0


def test_suppressed_addresses_and_domains_are_rejected_on_add(write_file):
    suppression_add(value="Blocked@Example.com", reason=SuppressionReason.MANUAL, source="test")
    suppression_add(value="spam.example", reason=SuppressionReason.MANUAL, source="test")
    summary = run(
        write_file(
            "email\nblocked@example.com\nx@spam.example\ny@mail.spam.example\nok@example.com\n"
        ),
        ContactListFactory(),
        ImportMode.UPSERT,
    )
    assert (summary.created, summary.rejected) == (1, 3)
    assert summary.rejected_by_reason == {"suppressed": 3}
    assert list(Contact.objects.values_list("email", flat=True)) == ["ok@example.com"]


def test_suppression_check_matches_address_or_domain():
    Suppression.objects.create(
        value="a@example.com", scope=SuppressionScope.ADDRESS, reason="manual"
    )
    Suppression.objects.create(
        value="blocked.example", scope=SuppressionScope.DOMAIN, reason="manual"
    )
    emails = ["A@example.com", "b@example.com", "c@blocked.example", "d@sub.blocked.example"]
    assert suppression_check(emails) == {
        "A@example.com",
        "c@blocked.example",
        "d@sub.blocked.example",
    }


def test_role_and_disposable_rejections_are_optional(write_file):
    path = write_file("email\ninfo@example.com\nx@mailinator.com\nann@example.com\n")
    contact_list = ContactListFactory()
    strict = run(path, contact_list, ImportMode.UPSERT, reject_role=True, reject_disposable=True)
    assert strict.rejected_by_reason == {"disposable_domain": 1, "role_address": 1}
    assert strict.created == 1
    lenient = run(path, contact_list, ImportMode.UPSERT)
    assert (lenient.created, lenient.unchanged, lenient.rejected) == (2, 1, 0)


def test_progress_is_reported_every_chunk(write_file):
    rows = "".join(f"u{i}@example.com\n" for i in range(25))
    seen = []
    run(
        write_file("email\n" + rows),
        ContactListFactory(),
        ImportMode.UPSERT,
        batch_size=10,
        on_progress=lambda p: seen.append(p.processed_rows),
    )
    assert seen == [0, 10, 20, 25]


def test_gb18030_file_with_chinese_headers_imports(write_file):
    text = "邮箱,姓名,手机\nzhang@example.com,张伟,13800000000\nli@example.com,李娜,\n"
    path = write_file(
        text.encode("gb18030")
        + b"".join(f"u{i}@example.com,王芳\n".encode("gb18030") for i in range(10))
    )
    summary = run(path, ContactListFactory(), ImportMode.UPSERT)
    assert (summary.created, summary.rejected, summary.encoding) == (12, 0, "gb18030")
    assert Contact.objects.get(email="zhang@example.com").attributes == {"phone": "13800000000"}
    assert Contact.objects.get(email="li@example.com").name == "李娜"


def _reader_threads():
    import threading

    return [t for t in threading.enumerate() if t.name == "contacts-import-reader"]


def test_suppressed_rows_are_reported_with_their_lines_across_chunks(write_file):
    suppression_add(value="blocked@example.com", reason=SuppressionReason.MANUAL)
    suppression_add(value="spam.example", reason=SuppressionReason.MANUAL)
    rows = [f"u{i}@example.com" for i in range(12)]
    rows[3] = "Blocked@Example.com"  # line 5
    rows[7] = "x@deep.mail.spam.example"  # line 9
    rows[10] = "BLOCKED@example.com"  # line 12: in-file duplicate of line 5 comes first
    summary = run(
        write_file("email\n" + "\n".join(rows) + "\n"),
        ContactListFactory(),
        ImportMode.ADD_NEW,
        batch_size=5,
    )
    assert (summary.created, summary.rejected, summary.total) == (9, 3, 12)
    assert summary.rejected_rows == [
        (5, "suppressed", "address or domain suppressed"),
        (9, "suppressed", "address or domain suppressed"),
        (12, "duplicate_in_file", "same address as line 5"),
    ]
    assert not Contact.objects.filter(email__icontains="blocked").exists()


def test_mixed_chunk_of_new_existing_and_changed_contacts_is_counted_exactly(write_file):
    contact_list = ContactListFactory()
    ContactFactory(email="Same@example.com", name="Same", attributes={"plan": "pro"})
    ContactFactory(email="old@example.com", name="Old", attributes={})
    already = ContactFactory(email="listed@example.com", name="Listed", attributes={})
    SubscriptionFactory(contact=already, contact_list=contact_list)
    summary = run(
        write_file(
            "email,name,plan\n"
            "same@EXAMPLE.com,Same,pro\n"
            "old@example.com,Older,\n"
            "new@example.com,New,free\n"
            "listed@example.com,,\n"
        ),
        contact_list,
        ImportMode.UPSERT,
    )
    assert (summary.created, summary.updated, summary.unchanged) == (1, 1, 2)
    assert Contact.objects.get(email="old@example.com").name == "Older"
    assert Contact.objects.get(email="Same@example.com").attributes == {"plan": "pro"}
    assert Contact.objects.count() == 4
    assert Subscription.objects.filter(contact_list=contact_list).count() == 4


def test_interrupted_import_stops_its_reader_thread(write_file):
    rows = "".join(f"user{i}@example.com\n" for i in range(50))
    path = write_file("email\n" + rows)

    def interrupt(progress):
        if progress.processed_rows:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(path, ContactListFactory(), ImportMode.UPSERT, batch_size=5, on_progress=interrupt)
    assert _reader_threads() == []


def test_a_reader_error_reaches_the_caller_and_stops_the_thread(write_file, monkeypatch):
    from contacts.imports import engine

    def broken_rows(records, plan, **kwargs):
        yield from []
        raise RuntimeError("disk went away")

    monkeypatch.setattr(engine, "contact_rows", broken_rows)
    with pytest.raises(RuntimeError, match="disk went away"):
        run(write_file("email\na@example.com\n"), ContactListFactory(), ImportMode.UPSERT)
    assert _reader_threads() == []


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL fast path")
def test_unique_violation_on_the_fast_path_falls_back_to_on_conflict(write_file, monkeypatch):
    from contacts.imports import postgresql

    real_merge = postgresql._pg_merge_chunk
    attempts = []

    def merge_losing_a_race(cursor, *args, on_conflict):
        attempts.append(on_conflict)
        if not on_conflict:
            # A unique violation inside the fast path's savepoint, as when a concurrent
            # import commits one of the same addresses first.
            cursor.execute(
                "INSERT INTO contacts_contact (email, name, attributes, status, created_at,"
                " updated_at) VALUES ('a@example.com', '', '{}', 'active', now(), now()),"
                " ('A@example.com', '', '{}', 'active', now(), now())"
            )
        return real_merge(cursor, *args, on_conflict=on_conflict)

    monkeypatch.setattr(postgresql, "_pg_merge_chunk", merge_losing_a_race)
    contact_list = ContactListFactory()
    summary = run(
        write_file("email\na@example.com\nb@example.com\n"), contact_list, ImportMode.UPSERT
    )
    assert attempts == ["", "ON CONFLICT DO NOTHING"]
    assert (summary.created, summary.unchanged) == (2, 0)
    assert sorted(Contact.objects.values_list("email", flat=True)) == [
        "a@example.com",
        "b@example.com",
    ]
    assert Subscription.objects.filter(contact_list=contact_list).count() == 2


def test_names_and_attributes_with_tabs_backslashes_and_line_breaks_round_trip(write_file):
    path = write_file(
        'email,name,note\nann@example.com,"Ann\tthe \\\\N first","line one\nline two \\\\ end"\n'
    )
    summary = run(path, ContactListFactory(), ImportMode.UPSERT)
    assert (summary.created, summary.rejected) == (1, 0)
    contact = Contact.objects.get()
    assert contact.name == "Ann\tthe \\\\N first"
    assert contact.attributes == {"note": "line one\nline two \\\\ end"}


def test_read_ahead_yields_in_order_and_raises_the_producer_error():
    from contacts.imports.engine import _read_ahead

    def produce():
        yield 1
        yield 2
        raise ValueError("bad byte")

    received = []
    with pytest.raises(ValueError, match="bad byte"):
        for item in _read_ahead(produce()):
            received.append(item)
    assert received == [1, 2]
    assert _reader_threads() == []


def test_closing_read_ahead_early_stops_the_producer():
    from contacts.imports.engine import _read_ahead

    produced = []

    def produce():
        for i in range(1000):
            produced.append(i)
            yield i

    ahead = _read_ahead(produce(), depth=1)
    assert next(ahead) == 0
    ahead.close()
    assert _reader_threads() == []
    assert len(produced) <= 3  # one handed over, one queued, one waiting to be queued


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL staging table")
def test_inside_an_outer_transaction_each_chunk_stages_only_its_own_rows(write_file):
    rows = "".join(f"user{i}@example.com\n" for i in range(7))
    # The test itself runs in a transaction, so the chunks' commits are savepoints and the
    # staging table's ON COMMIT DELETE ROWS never fires.
    summary = run(
        write_file("email\n" + rows), ContactListFactory(), ImportMode.UPSERT, batch_size=3
    )
    assert (summary.created, summary.unchanged) == (7, 0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM skylark_import_chunk")
        assert cursor.fetchone() == (1,)  # the last chunk only


@pytest.mark.django_db(transaction=True)
def test_chunks_written_on_parallel_connections_count_every_row_exactly(write_file, settings):
    """Outside a transaction, PostgreSQL imports write chunks on EDM_IMPORT_WRITERS
    connections; the summary and the rows are the same as a serial import's."""
    from contacts.imports.engine import _parallel_writers

    settings.EDM_IMPORT_WRITERS = 3
    contact_list = ContactListFactory(name="Parallel")
    ContactFactory(email="row7@example.com", name="Old", attributes={"plan": "free"})
    suppression_add(value="row11@example.com", reason=SuppressionReason.MANUAL)
    lines = ["email,name,plan"]
    for i in range(2, 402):  # file lines 2..401
        if i % 50 == 0:
            lines.append(f"broken-{i},Nobody,x")  # invalid address
        elif i == 301:
            lines.append("ROW5@example.com,Again,x")  # duplicate of line 5 (other chunk)
        else:
            lines.append(f"row{i}@example.com,Row {i},pro")
    summary = run(
        write_file("\n".join(lines) + "\n"), contact_list, ImportMode.UPSERT, batch_size=37
    )

    expected_parallel = 3 if connection.vendor == "postgresql" else 1
    assert _parallel_writers(ImportMode.UPSERT) == expected_parallel
    assert summary.rejected_by_reason == {
        "duplicate_in_file": 1,
        "invalid_email": 8,
        "suppressed": 1,
    }
    assert (summary.created, summary.updated, summary.unchanged) == (389, 1, 0)
    assert summary.total == 400
    assert [line for line, _, _ in summary.rejected_rows] == sorted([*range(50, 401, 50), 11, 301])
    assert Contact.objects.count() == 390
    assert Subscription.objects.filter(contact_list=contact_list).count() == 390
    updated = Contact.objects.get(email="row7@example.com")
    assert (updated.name, updated.attributes) == ("Row 7", {"plan": "pro"})


@pytest.mark.django_db(transaction=True)
def test_a_failing_chunk_stops_a_parallel_import_with_its_error(write_file, settings):
    """A writer's error reaches the caller (no hang); chunks already written stay."""
    settings.EDM_IMPORT_WRITERS = 2
    contact_list = ContactListFactory(name="Doomed")
    lines = ["email"] + [f"user{i}@example.com" for i in range(200)]
    path = write_file("\n".join(lines) + "\n")
    from contacts.models import ContactList

    ghost = ContactList(pk=contact_list.pk + 1000, name="ghost")  # never saved
    with pytest.raises(Exception, match="foreign key|FOREIGN KEY"):
        run(path, ghost, ImportMode.ADD_NEW, batch_size=20)
    assert not Subscription.objects.filter(contact_list_id=ghost.pk).exists()


def test_a_large_import_refreshes_the_planner_statistics(write_file, monkeypatch):
    """On PostgreSQL a large import ANALYZEs contacts and subscriptions, so that a campaign
    sent right after it is not planned on the sizes of the tables before the import."""
    from django.core.management import call_command

    from contacts.imports import contacts_statistics_refresh, jobs

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: SQLite plans without such statistics")

    def addresses(prefix: str) -> str:
        return "email\n" + "".join(f"{prefix}{i}@example.com\n" for i in range(6))

    summary = run(write_file(addresses("a"), "a.csv"), ContactListFactory(), ImportMode.ADD_NEW)
    assert not contacts_statistics_refresh(summary=summary)  # under ANALYZE_AFTER_ROWS
    monkeypatch.setattr(jobs, "ANALYZE_AFTER_ROWS", 5)
    with open(os.devnull, "w") as devnull:
        call_command(
            "import_contacts", str(write_file(addresses("b"), "b.csv")), "--list", "Big",
            stdout=devnull,
        )  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, reltuples FROM pg_class WHERE relname IN (%s, %s)",
            [Contact._meta.db_table, Subscription._meta.db_table],
        )
        tuples = dict(cursor.fetchall())
    assert tuples == {Contact._meta.db_table: 12, Subscription._meta.db_table: 12}


def test_a_file_of_refused_rows_stops_instead_of_rejecting_row_by_row(tmp_path, settings):
    """Reviewer's attack: an unclosed quote before 100 M short lines made 100 M refused rows
    (288 s of CPU). Past the limit of refused rows, and with most rows refused, the import
    stops with a clear error (without the limit it reads the whole file and succeeds)."""
    from contacts.errors import ImportFileError

    settings.EDM_IMPORT_MAX_REJECTED_ROWS = 20_000
    path = tmp_path / "quote.csv"
    path.write_bytes(b'email,name\n"' + b"a\n" * 200_000)
    with pytest.raises(ImportFileError, match="does not look like a contact list"):
        run(path, ContactListFactory(), ImportMode.ADD_NEW)


def test_a_file_over_the_row_limit_is_refused_with_a_clear_error(tmp_path, settings):
    from contacts.errors import ImportFileError

    settings.EDM_IMPORT_MAX_ROWS = 1_000
    path = tmp_path / "big.csv"
    path.write_text("email\n" + "".join(f"user{i}@example.com\n" for i in range(1_500)))
    with pytest.raises(ImportFileError, match="more than 1000 rows"):
        run(path, ContactListFactory(), ImportMode.ADD_NEW)
    # A messy but real list (a third of its rows refused) is still imported.
    settings.EDM_IMPORT_MAX_ROWS = 10_000
    settings.EDM_IMPORT_MAX_REJECTED_ROWS = 100
    rows = "".join(f"user{i}@example.com\n" if i % 3 else "not-an-address\n" for i in range(900))
    path.write_text("email\n" + rows)
    result = run(path, ContactListFactory(), ImportMode.ADD_NEW)
    assert result.rejected == 300 and result.created == 600
