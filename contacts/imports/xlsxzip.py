"""The XLSX archive, checked before anything is decompressed and read within limits (pure)."""

from __future__ import annotations

import logging
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO
from xml.parsers import expat

from django.utils.translation import gettext as _

from contacts.errors import ImportFileError, WorkbookRefused

logger = logging.getLogger(__name__)

MB = 1024 * 1024
CHUNK_BYTES = 64 * 1024
# Below this size a part's compression ratio says nothing (a 100 KB part of repeated tags
# compresses 500 times and costs nothing); the absolute caps still apply.
RATIO_FLOOR_BYTES = 1 * MB
# Excel never writes an element deeper than about 10 levels, nor a tag or a cell's text of
# more than about 200 KB; expat holds a whole tag (and its attributes) in memory, so both are
# bounded. No spreadsheet application writes comments, CDATA sections, processing
# instructions or a DTD either: they are refused, so every token ends within MAX_TAG_BYTES.
MAX_DEPTH = 64
MAX_TAG_BYTES = 1 * MB
MAX_PART_NAME = 1000
# Directory bytes allowed per part: Excel's entries take about 100 (46 fixed, name, extra).
DIRECTORY_ENTRY_BYTES = 256
# Excel's limit on the characters in a cell.
EXCEL_MAX_CELL_CHARS = 32767


@dataclass(frozen=True, slots=True)
class XlsxLimits:
    """What a workbook may cost before it is refused (defaults: EDM_IMPORT_XLSX_* settings)."""

    max_bytes: int = 256 * MB  # uncompressed, all parts together
    max_ratio: int = 100  # uncompressed / compressed, per part over RATIO_FLOOR_BYTES
    max_parts: int = 10_000
    max_shared_strings: int = 1_500_000
    max_shared_bytes: int = 120 * MB  # as Python strings in memory
    max_rows: int = 1_048_576  # Excel's own limit
    max_columns: int = 1024
    max_cell_chars: int = EXCEL_MAX_CELL_CHARS


def default_limits() -> XlsxLimits:
    """The limits from the EDM_IMPORT_XLSX_* settings (the defaults outside Django)."""
    from django.conf import settings

    if not settings.configured:
        return XlsxLimits()
    return XlsxLimits(
        max_bytes=settings.EDM_IMPORT_XLSX_MAX_MB * MB,
        max_ratio=settings.EDM_IMPORT_XLSX_MAX_RATIO,
        max_shared_strings=settings.EDM_IMPORT_XLSX_MAX_SHARED_STRINGS,
        max_shared_bytes=settings.EDM_IMPORT_XLSX_MAX_SHARED_MB * MB,
        max_rows=settings.EDM_IMPORT_XLSX_MAX_ROWS,
        max_columns=settings.EDM_IMPORT_XLSX_MAX_COLUMNS,
    )


def refused(code: str, message: str) -> WorkbookRefused:
    """A refusal to raise, logged by its code (never the file's content)."""
    logger.warning("workbook refused: %s", code)
    return WorkbookRefused(message)


LOCAL_NAMES: dict[str, str] = {}


def local_name(name: str) -> str:
    local = name.rpartition("}")[2]
    if len(LOCAL_NAMES) < 4096:  # bounded: element names come from the file
        LOCAL_NAMES[name] = local
    return local


class PartHandler:
    """Base for the expat targets: local names, bounded depth."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.depth = 0

    def start(self, name: str, attrs: dict[str, str]) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise refused(
                "depth",
                _("The workbook part %(part)s nests elements more than %(limit)s deep.")
                % {"part": self.part, "limit": MAX_DEPTH},
            )
        self.open(LOCAL_NAMES.get(name) or local_name(name), attrs)

    def end(self, name: str) -> None:
        self.depth -= 1
        self.close(LOCAL_NAMES.get(name) or local_name(name))

    def open(self, local: str, attrs: dict[str, str]) -> None:
        pass

    def close(self, local: str) -> None:
        pass

    def text(self, data: str) -> None:
        pass


def _damaged(exc: BaseException) -> ImportFileError:
    return ImportFileError(
        _("Cannot open the workbook: %(problem)s")
        % {"problem": str(exc)[:200] or type(exc).__name__}
    )


class Workbook:
    """An XLSX archive checked before anything is decompressed, read part by part within
    its limits: sizes and ratios from the central directory, enforced again while streaming
    (the directory can lie), no DTD (billion laughs, external entities), bounded tags and
    nesting, no part named twice. Close it (or use it as a context manager)."""

    def __init__(self, source: IO[bytes], *, limits: XlsxLimits | None = None) -> None:
        self.limits = limits or default_limits()
        self._spool: IO[bytes] | None = None
        self.used = 0  # bytes decompressed so far, all parts
        if not _seekable(source):
            source = self._spool = _spooled(source, self.limits.max_bytes)
        try:
            self._check_directory(source)
            self.archive = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            self._close_spool()
            raise _damaged(exc) from exc
        except WorkbookRefused:
            self._close_spool()
            raise
        try:
            self.parts = self._inspect()
        except BaseException:
            self.close()
            raise

    def _check_directory(self, source: IO[bytes]) -> None:
        """Refuse a central directory too big to parse, from its end record alone.

        zipfile builds an object of about 500 bytes per entry before anything can be
        counted, so a 50 MB upload of a million empty entries would cost 500 MB. Its loop
        is driven by the directory's size, not its entry count: both are checked.
        """
        position = source.tell()
        end = zipfile._EndRecData(source)  # the stdlib's own reader of the end record
        source.seek(position)
        if end is None:
            return  # not a zip: ZipFile says so
        entries, size = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]
        if entries > self.limits.max_parts or size > self.limits.max_parts * DIRECTORY_ENTRY_BYTES:
            raise refused(
                "parts",
                _("The workbook has %(count)s parts; at most %(limit)s are accepted.")
                % {
                    "count": max(entries, size // DIRECTORY_ENTRY_BYTES),
                    "limit": self.limits.max_parts,
                },
            )

    def _inspect(self) -> dict[str, zipfile.ZipInfo]:
        limits = self.limits
        members = self.archive.infolist()
        if len(members) > limits.max_parts:
            raise refused(
                "parts",
                _("The workbook has %(count)s parts; at most %(limit)s are accepted.")
                % {"count": len(members), "limit": limits.max_parts},
            )
        parts: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in members:
            key = info.filename.lstrip("/").casefold()
            if key in parts:
                raise refused(
                    "duplicate",
                    _("The workbook contains the part %(part)s twice.")
                    % {"part": info.filename[:MAX_PART_NAME]},
                )
            parts[key] = info
            if info.file_size > RATIO_FLOOR_BYTES and (
                info.file_size > limits.max_ratio * max(1, info.compress_size)
            ):
                raise refused(
                    "ratio",
                    _(
                        "The workbook part %(part)s is compressed %(ratio)s times; at most "
                        "%(limit)s times is accepted (a decompression bomb?)."
                    )
                    % {
                        "part": info.filename[:MAX_PART_NAME],
                        "ratio": info.file_size // max(1, info.compress_size),
                        "limit": limits.max_ratio,
                    },
                )
            total += info.file_size
            if total > limits.max_bytes:
                raise self._too_big()
        return parts

    def _too_big(self) -> WorkbookRefused:
        return refused(
            "size",
            _("The workbook expands to more than %(limit)s MB; split the file or save it as CSV.")
            % {"limit": self.limits.max_bytes // MB},
        )

    def part(self, name: str) -> zipfile.ZipInfo | None:
        return self.parts.get(name.lstrip("/").casefold())

    def chunks(self, info: zipfile.ZipInfo) -> Iterator[bytes]:
        """The decompressed bytes of a part, within its declared size and the budget."""
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ImportFileError(
                _("The workbook part %(part)s uses a compression Excel does not write.")
                % {"part": info.filename[:MAX_PART_NAME]}
            )
        try:
            with self.archive.open(info) as stream:
                read = 0
                while chunk := stream.read(CHUNK_BYTES):
                    read += len(chunk)
                    self.used += len(chunk)
                    # zipfile stops at the declared size, but the budget must not depend on it.
                    if read > info.file_size or self.used > self.limits.max_bytes:
                        raise self._too_big()
                    yield chunk
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError) as exc:
            raise _damaged(exc) from exc

    def parse(self, info: zipfile.ZipInfo, handler: PartHandler) -> Iterator[None]:
        """Feed a part to ``handler`` through expat, yielding after each chunk."""
        # UTF-8 whatever the part declares, so that the byte scan below sees every "<".
        parser = expat.ParserCreate(encoding="utf-8", namespace_separator="}")
        parser.buffer_text = True
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartDoctypeDeclHandler = self._no_dtd(info)
        parser.EntityDeclHandler = self._no_dtd(info)
        parser.StartElementHandler = handler.start
        parser.EndElementHandler = handler.end
        parser.CharacterDataHandler = handler.text
        scan = _TokenScan(info, self)
        try:
            for chunk in self.chunks(info):
                scan.check(chunk)
                parser.Parse(chunk, False)
                yield
            parser.Parse(b"", True)
        except expat.ExpatError as exc:
            raise _damaged(exc) from exc
        yield

    def _no_dtd(self, info: zipfile.ZipInfo) -> Callable[..., None]:
        def refuse(*args: object) -> None:
            raise _no_markup(info)

        return refuse

    def parse_all(self, info: zipfile.ZipInfo, handler: PartHandler) -> None:
        for _step in self.parse(info, handler):
            pass

    def close(self) -> None:
        self.archive.close()
        self._close_spool()

    def _close_spool(self) -> None:
        if self._spool is not None:
            self._spool.close()

    def __enter__(self) -> Workbook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _no_markup(info: zipfile.ZipInfo) -> WorkbookRefused:
    return refused(
        "markup",
        _(
            "The workbook part %(part)s contains a document type, entities, comments or "
            "processing instructions, which Excel never writes; it is refused."
        )
        % {"part": info.filename[:MAX_PART_NAME]},
    )


class _TokenScan:
    """Byte checks ahead of expat: no "<!" or late "<?", no run of MAX_TAG_BYTES without "<".

    Inside a tag, and inside text, "<" cannot appear; with comments, CDATA and DTDs refused,
    a long run without one is a tag (or a text) that expat would hold whole in memory.
    """

    __slots__ = ("info", "workbook", "offset", "since_open", "last")

    def __init__(self, info: zipfile.ZipInfo, workbook: Workbook) -> None:
        self.info, self.workbook = info, workbook
        self.offset = 0
        self.since_open = 0
        self.last = b""

    def check(self, chunk: bytes) -> None:
        joined = self.last + chunk
        if b"<!" in joined:
            raise _no_markup(self.info)
        # Only the XML declaration, at the very start (after a byte order mark, if any).
        base = self.offset - len(self.last)
        if joined.find(b"<?", max(0, 4 - base)) >= 0:
            raise _no_markup(self.info)
        opened = chunk.rfind(b"<")
        self.since_open = self.since_open + len(chunk) if opened < 0 else len(chunk) - opened
        if self.since_open > MAX_TAG_BYTES:
            raise refused(
                "tag",
                _("The workbook part %(part)s has an XML tag or value longer than %(limit)s MB.")
                % {"part": self.info.filename[:MAX_PART_NAME], "limit": MAX_TAG_BYTES // MB},
            )
        self.offset += len(chunk)
        self.last = chunk[-1:]


def _seekable(source: IO[bytes]) -> bool:
    try:
        return bool(source.seekable())
    except (AttributeError, ValueError):
        return False


def _spooled(source: IO[bytes], limit: int) -> IO[bytes]:
    """A seekable copy of a stream (zip needs its end first), no larger than ``limit``."""
    spool = tempfile.SpooledTemporaryFile(max_size=8 * MB)  # noqa: SIM115 - closed by Workbook
    copied = 0
    while chunk := source.read(CHUNK_BYTES):
        copied += len(chunk)
        if copied > limit:
            spool.close()
            raise refused("size", _("The workbook file is too large."))
        spool.write(chunk)
    spool.seek(0)
    return spool
