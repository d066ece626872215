"""import_contacts and export_contacts management commands."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command

from contacts.models import Contact, ContactList

pytestmark = pytest.mark.django_db


def test_import_contacts_json_prints_one_document(write_file):
    path = write_file(
        "email;name\n"
        "a@example.com;A\n"
        "B@example.com;B\n"
        "b@EXAMPLE.com;B dup\n"
        "nope;N\n"
        "c@example.com;C\x00\n"
    )
    out = io.StringIO()
    call_command("import_contacts", str(path), "--list", "Fresh", "--json", stdout=out)
    document = json.loads(out.getvalue())
    assert document == {
        "file": str(path),
        "list": "Fresh",
        "mode": "upsert",
        "encoding": "utf-8",
        "delimiter": ";",
        "total": 5,
        "created": 2,
        "updated": 0,
        "unchanged": 0,
        "rejected": 3,
        "rejected_by_reason": {"duplicate_in_file": 1, "invalid_email": 1, "nul_byte": 1},
        "rejected_rows": [
            {"line": 4, "reason": "duplicate_in_file", "detail": "same address as line 3"},
            {
                "line": 5,
                "reason": "invalid_email",
                "detail": document["rejected_rows"][1]["detail"],
            },
            {"line": 6, "reason": "nul_byte", "detail": "NUL byte at column 2"},
        ],
    }
    assert "'nope'" in document["rejected_rows"][1]["detail"]
    assert ContactList.objects.get(name="Fresh").contacts.count() == 2

    again = io.StringIO()
    call_command("import_contacts", str(path), "--list", "Fresh", "--json", stdout=again)
    second = json.loads(again.getvalue())
    assert (second["created"], second["unchanged"], second["rejected"]) == (0, 2, 3)
    assert Contact.objects.count() == 2


def test_export_contacts_writes_bom_and_neutralized_cells(write_file, tmp_path):
    path = write_file("email,name,city\na@example.com,-2+3,北京\nb@example.com,Bob,\t=cmd\n")
    call_command("import_contacts", str(path), "--list", "L", stdout=io.StringIO())
    output = tmp_path / "out.csv"
    call_command("export_contacts", "--list", "L", "--output", str(output), stderr=io.StringIO())
    raw = output.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    lines = raw.decode("utf-8-sig").splitlines()
    assert lines == [
        "email,name,status,subscription,city",
        "a@example.com,'-2+3,active,subscribed,北京",
        "b@example.com,Bob,active,subscribed,'=cmd",  # trimmed on import, then neutralized
    ]
