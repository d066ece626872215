"""demo/sample_contacts.csv holds exactly the documented counts (docs/contacts.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from contacts.imports import contacts_import
from contacts.models import Contact, ImportMode
from tests.factories import ContactListFactory

SAMPLE = Path(__file__).resolve().parents[2] / "demo" / "sample_contacts.csv"


@pytest.mark.django_db
def test_sample_file_counts_match_the_documentation():
    contact_list = ContactListFactory(name="Demo")
    summary = contacts_import(source=SAMPLE, contact_list=contact_list, mode=ImportMode.UPSERT)
    assert (summary.total, summary.created, summary.rejected) == (1000, 983, 17)
    assert summary.rejected_by_reason == {"duplicate_in_file": 5, "invalid_email": 12}
    assert Contact.objects.count() == 983
    assert not Contact.objects.filter(email__in=["not-an-email", "two@@example.com"]).exists()
    again = contacts_import(source=SAMPLE, contact_list=contact_list, mode=ImportMode.UPSERT)
    assert (again.created, again.updated, again.unchanged, again.rejected) == (0, 0, 983, 17)
