"""Exceptions raised by the contacts app."""

from __future__ import annotations


class ContactsError(Exception):
    """Base class for contacts errors."""


class ImportFileError(ContactsError):
    """The import file cannot be read at all (no header, no email column, broken workbook)."""


class ImportConfigError(ContactsError):
    """The import request is inconsistent (for example, unsubscribe mode without a list)."""


class WorkbookRefused(ImportFileError):
    """A workbook exceeds a safety limit (decompression bomb, oversized or malformed sheet)."""
