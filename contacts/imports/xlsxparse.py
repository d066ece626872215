"""Bounded streaming reader for the first sheet of an XLSX workbook (pure: no ORM)."""

from __future__ import annotations

import datetime as dt
import itertools
import posixpath
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from django.utils.translation import gettext as _
from openpyxl.styles.numbers import builtin_format_code, is_date_format, is_timedelta_format
from openpyxl.utils.datetime import MAC_EPOCH, WINDOWS_EPOCH, from_excel, from_ISO8601

from contacts.errors import ImportFileError
from contacts.imports.csvparse import ReadProgress, Record, _check_fields
from contacts.imports.xlsxzip import (
    LOCAL_NAMES,
    MAX_DEPTH,
    MB,
    PartHandler,
    Workbook,
    XlsxLimits,
    local_name,
    refused,
)
from contacts.normalize import RejectReason

__all__ = ["XlsxLimits", "Workbook", "open_workbook", "sheet_rows", "workbook_data_rows"]

# Excel's own limit on cell formats is 64,000.
MAX_CELL_FORMATS = 100_000
# Lone surrogates never come out of an XML parser, so they can mark cells in band.
TOO_LARGE_MARK = "\udcfe"
MISSING_STRING_MARK = "\udcfd"

_REL_OFFICE_DOCUMENT = "/officeDocument"
_REL_WORKSHEET = "/worksheet"
_REL_SHARED_STRINGS = "/sharedStrings"
_REL_STYLES = "/styles"
_CELL_REF = re.compile(r"([A-Za-z]{1,3})(\d*)")
_ROW_TAG = re.compile(rb"<(?:\w+:)?row[\s>/]")
_DIMENSION = re.compile(rb"<(?:\w+:)?dimension\s+ref=\"[A-Z]*\d*:?[A-Z]*(\d+)\"")


@dataclass(frozen=True, slots=True)
class SheetRow:
    """One <row> of the sheet: its number as Excel shows it and its cells' text."""

    line: int
    cells: tuple[str, ...]
    # Why the row cannot be read, with the column: "wide" (a cell beyond the column limit),
    # "large" (a value over the cell limit), "missing" (a shared string that is not there).
    problem: tuple[str, int] | None = None


def _attr(attrs: dict[str, str], local: str) -> str | None:
    """An attribute by local name, whatever its namespace (r:id, id)."""
    if local in attrs:
        return attrs[local]
    suffix = "}" + local
    for key, value in attrs.items():
        if key.endswith(suffix):
            return value
    return None


class _Relationships(PartHandler):
    def __init__(self, part: str) -> None:
        super().__init__(part)
        self.rels: list[tuple[str, str, str]] = []  # (id, type, target)

    def open(self, local: str, attrs: dict[str, str]) -> None:
        if local == "Relationship" and len(self.rels) < MAX_CELL_FORMATS:
            if attrs.get("TargetMode", "Internal") == "Internal":
                self.rels.append(
                    (attrs.get("Id", ""), attrs.get("Type", ""), attrs.get("Target", ""))
                )


class _WorkbookPart(PartHandler):
    def __init__(self, part: str) -> None:
        super().__init__(part)
        self.sheet_ids: list[str] = []
        self.epoch = WINDOWS_EPOCH

    def open(self, local: str, attrs: dict[str, str]) -> None:
        if local == "sheet" and len(self.sheet_ids) < MAX_CELL_FORMATS:
            self.sheet_ids.append(_attr(attrs, "id") or "")
        elif local == "workbookPr" and attrs.get("date1904", "").lower() in ("1", "true"):
            self.epoch = MAC_EPOCH


class _Styles(PartHandler):
    """The number format of each cell format (cellXfs), to know which numbers are dates."""

    def __init__(self, part: str) -> None:
        super().__init__(part)
        self.custom: dict[int, str] = {}
        self.formats: list[int] = []
        self.in_cell_xfs = False

    def open(self, local: str, attrs: dict[str, str]) -> None:
        if local == "cellXfs":
            self.in_cell_xfs = True
        elif local == "xf" and self.in_cell_xfs:
            if len(self.formats) >= MAX_CELL_FORMATS:
                raise refused(
                    "styles",
                    _("The workbook has more than %(limit)s cell formats.")
                    % {"limit": MAX_CELL_FORMATS},
                )
            self.formats.append(_int(attrs.get("numFmtId"), 0))
        elif local == "numFmt" and len(self.custom) < MAX_CELL_FORMATS:
            self.custom[_int(attrs.get("numFmtId"), -1)] = attrs.get("formatCode", "")[:1000]

    def close(self, local: str) -> None:
        if local == "cellXfs":
            self.in_cell_xfs = False

    def date_styles(self) -> tuple[frozenset[int], frozenset[int]]:
        dates, durations = set(), set()
        kinds: dict[int, tuple[bool, bool]] = {}  # many cell formats share a number format
        for index, format_id in enumerate(self.formats):
            kind = kinds.get(format_id)
            if kind is None:
                code = self.custom.get(format_id) or builtin_format_code(format_id)
                kind = kinds[format_id] = (is_date_format(code), is_timedelta_format(code))
            if kind[0]:
                dates.add(index)
            if kind[1]:
                durations.add(index)
        return frozenset(dates), frozenset(durations)


class _CellText(PartHandler):
    """A part whose cells' text is collected while ``collecting``, up to the cell limit (a
    longer cell keeps nothing: it is refused or read as empty by the subclass)."""

    limits: XlsxLimits
    pieces: list[str]
    length: int
    collecting: bool

    def text(self, data: str) -> None:
        if self.collecting:
            self.length += len(data)
            if self.length <= self.limits.max_cell_chars:
                self.pieces.append(data)
            else:
                self.pieces = []


class _SharedStrings(_CellText):
    """The shared strings table (rich text runs joined, phonetic runs left out), capped."""

    def __init__(self, part: str, limits: XlsxLimits) -> None:
        super().__init__(part)
        self.limits = limits
        self.strings: list[str] = []
        self.memory = 0  # what the table holds: the strings as Python objects and the list
        self.pieces: list[str] = []
        self.length = 0
        self.in_si = self.collecting = False
        self.in_phonetic = 0

    def open(self, local: str, attrs: dict[str, str]) -> None:
        if local == "si":
            self.in_si, self.pieces, self.length = True, [], 0
        elif local == "rPh":
            self.in_phonetic += 1
        elif local == "t" and self.in_si and not self.in_phonetic:
            self.collecting = True

    def close(self, local: str) -> None:
        if local == "t":
            self.collecting = False
        elif local == "rPh":
            self.in_phonetic -= 1
        elif local == "si" and self.in_si:
            self.in_si = False
            self._add("".join(self.pieces) if self.length <= self.limits.max_cell_chars else "")

    def _add(self, value: str) -> None:
        if len(self.strings) >= self.limits.max_shared_strings:
            raise refused(
                "shared-count",
                _(
                    "The workbook has more than %(limit)s shared strings; split the file or "
                    "save it as CSV."
                )
                % {"limit": self.limits.max_shared_strings},
            )
        if self.length > self.limits.max_cell_chars:
            value = TOO_LARGE_MARK
        else:
            # What openpyxl does: the escaped underscore of "_x005F_xHHHH_" is dropped.
            value = value.replace("x005F_", "")
        # Counted as held in memory: an astral character costs 4 bytes, a CJK one 2, and
        # every string about 50 more, so a count of characters would not bound it.
        self.memory += sys.getsizeof(value) + 8
        if self.memory > self.limits.max_shared_bytes:
            raise refused(
                "shared-size",
                _(
                    "The workbook's shared strings take more than %(limit)s MB; split the file "
                    "or save it as CSV."
                )
                % {"limit": self.limits.max_shared_bytes // MB},
            )
        self.strings.append(value)


class _Sheet(_CellText):
    """Cells of each row as text; completed rows are collected in ``done``."""

    def __init__(
        self,
        part: str,
        *,
        limits: XlsxLimits,
        strings: list[str],
        dates: frozenset[int],
        durations: frozenset[int],
        epoch: dt.datetime,
    ) -> None:
        super().__init__(part)
        self.limits = limits
        self.strings = strings
        self.dates, self.durations, self.epoch = dates, durations, epoch
        self.done: list[SheetRow] = []
        self.rows = 0
        self.row_number = 0
        self.cells: list[str] = []
        self.problem: tuple[str, int] | None = None
        self.column = 0
        self.cell_type = "n"
        self.cell_style = 0
        self.pieces: list[str] = []
        self.length = 0
        self.collecting = False
        self.in_cell = self.in_inline = False
        self.in_phonetic = 0

    # start and end inline the base class's (the sheet is the hot path: one call per element).
    def start(self, name: str, attrs: dict[str, str]) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            super().start(name, attrs)  # raises
        self.open(LOCAL_NAMES.get(name) or local_name(name), attrs)

    def end(self, name: str) -> None:
        self.depth -= 1
        self.close(LOCAL_NAMES.get(name) or local_name(name))

    def open(self, local: str, attrs: dict[str, str]) -> None:
        if local == "c":
            self.in_cell = True
            self.cell_type = attrs.get("t", "n")
            self.cell_style = _int(attrs.get("s"), 0)
            self.pieces, self.length = [], 0
            ref = _CELL_REF.fullmatch(attrs.get("r", ""))
            self.column = _column_index(ref.group(1)) if ref else self.column + 1
        elif not self.in_cell:
            if local == "row":
                self._open_row(attrs.get("r"))
        elif local == "v" and self.cell_type != "inlineStr":
            self.collecting = True
        elif local == "is":
            self.in_inline = True
        elif local == "rPh":
            self.in_phonetic += 1
        elif local == "t" and self.in_inline and not self.in_phonetic:
            self.collecting = True

    def _open_row(self, number: str | None) -> None:
        self.rows += 1
        try:
            declared: int | None = int(number)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            declared = _int(number, None) if number else None
        self.row_number = declared if declared is not None else self.row_number + 1
        if self.rows > self.limits.max_rows or self.row_number > self.limits.max_rows:
            raise refused(
                "rows",
                _("The sheet has more than %(limit)s rows; split the file.")
                % {"limit": self.limits.max_rows},
            )
        self.cells, self.problem, self.column = [], None, 0

    def close(self, local: str) -> None:
        if local == "c":
            self.in_cell = self.collecting = self.in_inline = False
            self._store_cell()
        elif local in ("v", "t"):
            self.collecting = False
        elif local == "rPh":
            self.in_phonetic -= 1
        elif local == "is":
            self.in_inline = False
        elif local == "row":
            if self.cells or self.problem:  # empty rows are skipped anyway: not even built
                self.done.append(SheetRow(self.row_number, tuple(self.cells), self.problem))
                self.cells = []

    def _store_cell(self) -> None:
        column = self.column
        if column > self.limits.max_columns:
            self.problem = self.problem or ("wide", column)  # its cells beyond are not kept
            return
        if self.length > self.limits.max_cell_chars:
            value = TOO_LARGE_MARK
        else:
            value = self._value("".join(self.pieces))
        if not value:
            return
        if value in (TOO_LARGE_MARK, MISSING_STRING_MARK) and self.problem is None:
            self.problem = ("large" if value == TOO_LARGE_MARK else "missing", column)
        cells = self.cells
        if column > len(cells):
            cells.extend([""] * (column - len(cells)))
        cells[column - 1] = value

    def _value(self, raw: str) -> str:
        """A cell's text as openpyxl's reader (data_only) would give its value."""
        kind = self.cell_type
        if not raw or kind in ("str", "inlineStr", "e"):
            return raw
        if kind == "s":
            index = _int(raw, -1)
            return self.strings[index] if 0 <= index < len(self.strings) else MISSING_STRING_MARK
        if kind == "b":
            return "True" if raw.strip() == "1" else "False"
        try:
            if kind == "d":
                return cell_text(from_ISO8601(raw))
            number = float(raw) if any(ch in raw for ch in ".Ee") else int(raw)
            if self.cell_style in self.dates:
                value = from_excel(number, self.epoch, timedelta=self.cell_style in self.durations)
                return cell_text(value)
            return cell_text(number)
        except (ValueError, OverflowError, TypeError):
            return raw  # not what its type says: the text as written


def _int(value: str | None, default):
    if value is None or len(value) > 20:
        return default
    try:
        return int(value)
    except ValueError:
        try:
            number = float(value)
        except ValueError:
            return default
        return int(number) if number.is_integer() else default


def _column_index(letters: str) -> int:
    index = 0
    for letter in letters.upper():
        index = index * 26 + ord(letter) - 64
    return index


def cell_text(value: object) -> str:
    """The text of a cell value as the importer stores it."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime):
        # Excel has only date-times: a date cell comes as midnight, and reads as a date.
        if value.time() == dt.time(0) and value.tzinfo is None:
            return value.date().isoformat()
        return value.isoformat(timespec="seconds" if not value.microsecond else "auto")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def relationships(workbook: Workbook, part: str) -> list[tuple[str, str, str]]:
    """(id, type, archive path) of a part's relationships (ECMA-376 part 2, 9.3)."""
    folder, name = posixpath.split(part)
    info = workbook.part(posixpath.join(folder, "_rels", name + ".rels"))
    if info is None:
        return []
    handler = _Relationships(info.filename)
    workbook.parse_all(info, handler)
    resolved = []
    for rel_id, rel_type, target in handler.rels:
        if target.startswith("/"):
            path = target.lstrip("/")
        else:
            path = posixpath.normpath(posixpath.join(folder, target))
        resolved.append((rel_id, rel_type, path))
    return resolved


def first_sheet(workbook: Workbook) -> tuple[str, list[tuple[str, str, str]], dt.datetime]:
    """The first worksheet's path, the workbook's relationships and its date epoch."""
    workbook_path = next(
        (
            path
            for _id, rel_type, path in relationships(workbook, "")
            if rel_type.endswith(_REL_OFFICE_DOCUMENT)
        ),
        "xl/workbook.xml",
    )
    info = workbook.part(workbook_path)
    if info is None:
        raise ImportFileError(_("The file is not an Excel workbook (no workbook part)."))
    handler = _WorkbookPart(info.filename)
    workbook.parse_all(info, handler)
    rels = relationships(workbook, info.filename)
    worksheets = {
        rel_id: path for rel_id, rel_type, path in rels if rel_type.endswith(_REL_WORKSHEET)
    }
    sheet = next((worksheets[i] for i in handler.sheet_ids if i in worksheets), None)
    if sheet is None or workbook.part(sheet) is None:
        raise ImportFileError(_("The workbook has no worksheet."))
    return sheet, rels, handler.epoch


def sheet_rows(workbook: Workbook) -> Iterator[SheetRow]:
    """The rows of the first sheet, in file order, as they come out of the decompressor.

    Shared strings are loaded first (capped); rows and columns that are missing cost nothing,
    whatever the sheet's declared dimension says: it is never read.
    """
    sheet_path, rels, epoch = first_sheet(workbook)
    by_type = {rel_type.rpartition("/")[2]: path for _id, rel_type, path in rels}
    strings: list[str] = []
    info = workbook.part(by_type.get(_REL_SHARED_STRINGS[1:], "xl/sharedStrings.xml"))
    if info is not None:
        shared = _SharedStrings(info.filename, workbook.limits)
        workbook.parse_all(info, shared)
        strings = shared.strings
    dates: frozenset[int] = frozenset()
    durations: frozenset[int] = frozenset()
    info = workbook.part(by_type.get(_REL_STYLES[1:], "xl/styles.xml"))
    if info is not None:
        styles = _Styles(info.filename)
        workbook.parse_all(info, styles)
        dates, durations = styles.date_styles()
    sheet_info = workbook.part(sheet_path)
    assert sheet_info is not None  # first_sheet checked it
    sheet = _Sheet(
        sheet_info.filename,
        limits=workbook.limits,
        strings=strings,
        dates=dates,
        durations=durations,
        epoch=epoch,
    )
    for _step in workbook.parse(sheet_info, sheet):
        if sheet.done:
            done, sheet.done = sheet.done, []
            yield from done


def workbook_data_rows(handle: IO[bytes], *, limits: XlsxLimits | None = None) -> int | None:
    """The data rows of a workbook's first sheet (rows minus the header), or None.

    For progress estimates only: read from the sheet's <dimension> element, which Excel and
    LibreOffice write (capped, since it can say anything), or else the <row> elements are
    counted as the sheet is decompressed, within the workbook's limits. Shared strings are
    never loaded.
    """
    try:
        with Workbook(handle, limits=limits) as workbook:
            sheet_path, _rels, _epoch = first_sheet(workbook)
            info = workbook.part(sheet_path)
            assert info is not None
            chunks = workbook.chunks(info)
            head = b"".join(_take(chunks, 64 * 1024))
            found = _DIMENSION.search(head)
            if found:
                digits = found.group(1)
                last = int(digits) if len(digits) < 10 else workbook.limits.max_rows
                if last > 1:
                    return min(last, workbook.limits.max_rows) - 1
            rows, carry = 0, b""
            for chunk in itertools.chain([head], chunks):
                data = carry + chunk
                # A tag that starts in the last bytes may be cut: count it next round.
                keep = len(data) - 64
                rows += sum(1 for m in _ROW_TAG.finditer(data) if m.start() < keep)
                carry = data[max(0, keep) :]
            rows += len(_ROW_TAG.findall(carry))
            return max(0, rows - 1)
    except ImportFileError:
        return None


def _take(chunks: Iterator[bytes], size: int) -> list[bytes]:
    taken, total = [], 0
    for chunk in chunks:
        taken.append(chunk)
        total += len(chunk)
        if total >= size:
            break
    return taken


def open_workbook(
    source: IO[bytes],
    *,
    limits: XlsxLimits | None,
    max_field_bytes: int,
    progress: ReadProgress,
) -> tuple[Workbook, tuple[str, ...], Iterator[Record]]:
    """The workbook, the header of its first sheet and an iterator of its data records."""
    workbook = Workbook(source, limits=limits)
    try:
        rows = sheet_rows(workbook)
        headers = _header(rows, workbook.limits, max_field_bytes)
    except BaseException:
        workbook.close()
        raise
    return workbook, headers, _records(rows, workbook.limits, max_field_bytes, progress)


def _header(rows: Iterator[SheetRow], limits: XlsxLimits, max_field_bytes: int) -> tuple[str, ...]:
    for row in rows:
        problem = _problem_text(row.problem, limits) if row.problem else None
        if problem is None and any(row.cells):
            checked = _check_fields(list(row.cells), max_field_bytes)
            problem = checked[1] if checked else None
        if problem is not None:
            raise ImportFileError(
                _("Cannot read the header on row %(line)s: %(problem)s")
                % {"line": row.line, "problem": problem}
            )
        headers = [cell.strip() for cell in row.cells]
        while headers and not headers[-1]:
            headers.pop()
        if headers:
            return tuple(headers)
    raise ImportFileError(_("The workbook's first sheet is empty."))


def _records(
    rows: Iterator[SheetRow], limits: XlsxLimits, max_field_bytes: int, progress: ReadProgress
) -> Iterator[Record]:
    for row in rows:
        if row.problem is not None:
            kind = row.problem[0]
            reason = RejectReason.FIELD_TOO_LARGE if kind == "large" else RejectReason.MALFORMED_ROW
            yield Record(row.line, reason=reason, detail=_problem_text(row.problem, limits))
            continue
        cells = row.cells
        if not any(cells):
            continue
        problem = _check_fields(list(cells), max_field_bytes)
        if problem:
            yield Record(row.line, reason=problem[0], detail=problem[1])
            continue
        yield Record(row.line, cells)
    # Workbooks are read through the decompressor; progress is by rows.
    progress.bytes_read = progress.size or 0


def _problem_text(problem: tuple[str, int], limits: XlsxLimits) -> str:
    kind, column = problem
    if kind == "wide":
        return _("a cell in column %(column)s, beyond the %(limit)s columns that are read") % {
            "column": column,
            "limit": limits.max_columns,
        }
    if kind == "large":
        return _("column %(column)s is longer than %(limit)s characters") % {
            "column": column,
            "limit": limits.max_cell_chars,
        }
    return _("column %(column)s refers to a shared string that is not in the workbook") % {
        "column": column
    }
