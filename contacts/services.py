"""Writes for contacts: suppressions, exports and lists (imports: contacts.imports)."""

from __future__ import annotations

import csv
from typing import IO

from contacts.errors import ImportConfigError
from contacts.models import ContactList, Suppression, SuppressionReason, SuppressionScope
from contacts.normalize import InvalidEmail, normalize_email
from contacts.selectors import contacts_export_rows

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
