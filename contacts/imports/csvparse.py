"""Streaming reader for contact files (CSV, TSV, XLSX) with bounded memory (pure: no ORM).

Workbooks are read by xlsxparse (in this package), within its limits (decompression bombs).
Bytes are decoded incrementally; bytes that do not decode become a marker character, so the row
they belong to is rejected ("undecodable bytes at column N") instead of being stored as mojibake.
Physical lines are bounded in size, and records spanning lines (quoted line breaks) are bounded
in lines and size, so no input (a 1 GB file without a line break, an unmatched quote) can make
the reader hold more than a few megabytes.
"""

from __future__ import annotations

import codecs
import csv
import os
import re
import unicodedata
from array import array
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, NamedTuple

from contacts.errors import ImportFileError
from contacts.imports.xlsxzip import XlsxLimits
from contacts.normalize import EmailPolicy, InvalidEmail, RejectReason, email_key, normalize_email
from mailkit.text import has_refused

# A lone surrogate can never come out of a strict decoder, so it marks undecodable input.
UNDECODABLE_MARK = "\udcff"


def _mark_undecodable(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return UNDECODABLE_MARK, exc.end


codecs.register_error("skylark_mark", _mark_undecodable)

SAMPLE_BYTES = 64 * 1024
READ_CHUNK_BYTES = 256 * 1024
DEFAULT_MAX_FIELD_BYTES = 64 * 1024
DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
DEFAULT_MAX_RECORD_LINES = 1000
DELIMITERS = ",;\t|"
XLSX_MAGIC = b"PK\x03\x04"

# Detection candidates after BOMs and strict UTF-8: GB18030 is a superset of GBK and GB2312.
_DETECT_CANDIDATES = ["gb18030", "big5", "shift_jis", "cp1252", "latin_1"]
_ENCODING_ALIASES = {"gbk": "gb18030", "gb2312": "gb18030", "cp936": "gb18030"}

# csv only limits field sizes; our own limits are applied per record, so csv's must not bite
# first with a less useful message.
csv.field_size_limit(max(csv.field_size_limit(), DEFAULT_MAX_RECORD_BYTES * 4))


@dataclass(frozen=True, slots=True)
class Record:
    """One data record: ``line`` is the 1-based physical line where it starts (header = 1)."""

    line: int
    fields: tuple[str, ...] = ()
    reason: RejectReason | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SourceInfo:
    kind: str  # "csv" or "xlsx"
    encoding: str  # codec name, "xlsx" for workbooks
    delimiter: str | None
    headers: tuple[str, ...]


@dataclass(slots=True)
class ReadProgress:
    """Mutable counters the reader updates as it goes (read by progress reporting)."""

    bytes_read: int = 0
    size: int | None = None
    records: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        if not self.size:
            return None
        return min(1.0, self.bytes_read / self.size)


def canonical_encoding(name: str) -> str:
    """Python's canonical codec name for ``name`` (GBK and GB2312 widened to GB18030)."""
    try:
        canonical = codecs.lookup(name).name
    except LookupError:
        raise ImportFileError(f"unknown encoding {name!r}") from None
    return _ENCODING_ALIASES.get(canonical, canonical)


def _is_valid_utf8_prefix(sample: bytes, complete: bool) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        decoder.decode(sample, final=complete)
    except UnicodeDecodeError:
        return False
    return True


def _mostly_utf8(sample: bytes) -> bool:
    """UTF-8 with a few bad bytes: keep UTF-8 so those rows are rejected, not the whole file."""
    text = sample.decode("utf-8", errors="surrogateescape")
    bad = sum(1 for ch in text if "\udc80" <= ch <= "\udcff")
    good_multibyte = sum(1 for ch in text if ord(ch) > 0x7F and not "\udc80" <= ch <= "\udcff")
    return good_multibyte >= 8 and bad * 20 <= good_multibyte


# A CJK character glued between Latin letters ("K闤n" for "Köln"): a Latin-1 accent read
# as the lead byte of a double-byte codec, not something people type.
_CJK_INSIDE_LATIN_WORD = re.compile(
    r"(?<=[A-Za-z])[\u3000-\u9fff\uac00-\ud7af\uf900-\ufaff](?=[A-Za-z])"
)


def _implausible_chars(text: str) -> int:
    # Half-width katakana and control characters are what a wrong legacy codec tends to produce.
    return len(_CJK_INSIDE_LATIN_WORD.findall(text)) + sum(
        1
        for ch in text
        if "\uff61" <= ch <= "\uff9f"
        or (unicodedata.category(ch) in {"Cc", "Co"} and ch not in "\r\n\t")
    )


def detect_encoding(sample: bytes, *, complete: bool = False) -> str:
    """Guess the encoding of a file from its first bytes.

    BOMs first (UTF-8, UTF-16 LE/BE), then strict UTF-8, then charset-normalizer restricted
    to the encodings our users actually send (GB18030, Big5, Shift_JIS, Windows-1252/Latin-1).
    ``complete`` says the sample is the whole file (so a truncated last character is an error).
    """
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith(codecs.BOM_UTF16_LE) or sample.startswith(codecs.BOM_UTF16_BE):
        return "utf-16"
    if sample.isascii() or _is_valid_utf8_prefix(sample, complete):
        return "utf-8"
    if _mostly_utf8(sample):
        return "utf-8"
    from charset_normalizer import from_bytes

    matches = list(from_bytes(sample, cp_isolation=_DETECT_CANDIDATES))
    if not matches:
        return "utf-8"  # undecodable rows are then rejected one by one, never mis-decoded
    best = min(
        matches,
        # Ties (a few characters are valid in several codecs) go to the order of the
        # candidates: GB18030 first, as most of our Chinese files are.
        key=lambda m: (
            m.chaos + _implausible_chars(str(m)) / max(1, len(str(m))),
            _candidate_rank(m.encoding),
        ),
    )
    return canonical_encoding(best.encoding)


def _candidate_rank(encoding: str) -> int:
    name = canonical_encoding(encoding)
    ranks = [canonical_encoding(candidate) for candidate in _DETECT_CANDIDATES]
    return ranks.index(name) if name in ranks else len(ranks)


def _delimiter_from_counts(lines: list[str]) -> str:
    header = lines[0] if lines else ""
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def detect_delimiter(text_sample: str) -> str:
    """Comma, semicolon, tab or pipe, by csv.Sniffer on whole lines of the sample."""
    lines = text_sample.splitlines()
    if len(lines) > 1 and not text_sample.endswith(("\n", "\r")):
        lines = lines[:-1]  # the sample cut a line in half
    lines = lines[:50]
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters=DELIMITERS).delimiter
    except csv.Error:
        return _delimiter_from_counts(lines)


class _ChainedReader:
    """Re-serve the bytes already read for detection, then the rest of a non-seekable stream."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def seekable(self) -> bool:
        return False

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size is None or size < 0:
                data, self._head = self._head + self._rest.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._rest.read(size)


def _open_binary(source: str | os.PathLike | IO[bytes]) -> tuple[BinaryIO, bool, int | None]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return open(path, "rb"), True, path.stat().st_size  # noqa: SIM115 - closed by caller
    size = getattr(source, "size", None)
    if hasattr(source, "open") and getattr(source, "closed", False):
        source.open("rb")
    if size is None:
        try:
            pos = source.tell()
            size = source.seek(0, os.SEEK_END) - pos
            source.seek(pos)
        except (OSError, AttributeError, ValueError):
            size = None
    return source, False, size


def _physical_lines(
    stream: IO[bytes], encoding: str, max_line_chars: int, progress: ReadProgress
) -> Iterator[tuple[str | None, int]]:
    """Yield (line text with its ending, line number); text is None for an over-long line.

    An over-long line is skipped up to its end in fixed-size chunks, so memory stays bounded
    however long it is.
    """
    decoder = codecs.getincrementaldecoder(encoding)(errors="skylark_mark")
    pending: list[str] = []
    pending_len = 0
    overflow = False
    line_no = 0
    while True:
        chunk = stream.read(READ_CHUNK_BYTES)
        final = not chunk
        progress.bytes_read += len(chunk)
        text = decoder.decode(chunk, final=final)
        start = 0
        while True:
            nl = text.find("\n", start)
            if nl < 0:
                break
            line_no += 1
            if overflow or pending_len + (nl + 1 - start) > max_line_chars:
                yield None, line_no
            else:
                pending.append(text[start : nl + 1])
                yield "".join(pending), line_no
            pending, pending_len, overflow = [], 0, False
            start = nl + 1
        rest = text[start:]
        if rest and not overflow:
            if pending_len + len(rest) > max_line_chars:
                pending, pending_len, overflow = [], 0, True
            else:
                pending.append(rest)
                pending_len += len(rest)
        if final:
            if overflow or pending:
                line_no += 1
                yield (None if overflow else "".join(pending)), line_no
            return


def _quote_state(text: str, delimiter: str, inside: bool) -> bool:
    """Whether ``text`` leaves a quoted field open, as csv (doublequote dialect) reads it."""
    pos = 0
    n = len(text)
    while True:
        q = text.find('"', pos)
        if q < 0:
            return inside
        if inside:
            if q + 1 < n and text[q + 1] == '"':
                pos = q + 2  # an escaped quote ("")
                continue
            inside = False
            pos = q + 1
        else:
            # A quote opens a quoted field only at the start of a field.
            if q == 0 or text[q - 1] == delimiter:
                inside = True
            pos = q + 1


def _logical_records(
    lines: Iterator[tuple[str | None, int]],
    delimiter: str,
    max_record_chars: int,
    max_record_lines: int,
) -> Iterator[tuple[str | None, int, RejectReason | None, str]]:
    """Group physical lines into records: (text, first line, reject reason, detail)."""
    replay: deque[tuple[str | None, int]] = deque()

    def next_line() -> tuple[str | None, int] | None:
        if replay:
            return replay.popleft()
        return next(lines, None)

    while True:
        item = next_line()
        if item is None:
            return
        text, line_no = item
        if text is None:
            yield None, line_no, RejectReason.MALFORMED_ROW, "record too large (no line break)"
            continue
        if '"' not in text or not _quote_state(text, delimiter, False):
            yield text, line_no, None, ""
            continue
        # A quoted field continues on the next lines: gather them, within bounds.
        parts = [text]
        taken: list[tuple[str | None, int]] = []
        size = len(text)
        closed = False
        while len(taken) < max_record_lines:
            follow = next_line()
            if follow is None:
                break
            taken.append(follow)
            follow_text = follow[0]
            if follow_text is None:
                break
            size += len(follow_text)
            if size > max_record_chars:
                break
            parts.append(follow_text)
            if not _quote_state(follow_text, delimiter, True):
                closed = True
                break
        if closed:
            yield "".join(parts), line_no, None, ""
            continue
        # Unmatched quote: reject the line that opened it and read the following lines again.
        yield None, line_no, RejectReason.MALFORMED_ROW, "unmatched quote"
        replay.extendleft(reversed(taken))


def _check_fields(fields: list[str], max_field_bytes: int) -> tuple[RejectReason, str] | None:
    for index, value in enumerate(fields, start=1):
        if UNDECODABLE_MARK in value:
            return RejectReason.UNDECODABLE, f"undecodable bytes at column {index}"
        if "\x00" in value:
            return RejectReason.NUL_BYTE, f"NUL byte at column {index}"
        if not value.isascii() and has_refused(value):
            # Any other lone surrogate (a workbook's _xD800_ escape): unstorable as well.
            return RejectReason.UNDECODABLE, f"undecodable bytes at column {index}"
        if len(value) * 4 > max_field_bytes and len(value.encode("utf-8")) > max_field_bytes:
            return (
                RejectReason.FIELD_TOO_LARGE,
                f"column {index} is larger than {max_field_bytes} bytes",
            )
    return None


class ContactFileReader:
    """Iterate the records of a contact file; ``info`` describes what was detected.

    Use as a context manager; iterating yields Record objects for the data rows (not the
    header), including the rejected ones, in file order.
    """

    def __init__(
        self,
        source: str | os.PathLike | IO[bytes],
        *,
        encoding: str = "auto",
        delimiter: str | None = None,
        max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        max_record_lines: int = DEFAULT_MAX_RECORD_LINES,
        xlsx_limits: XlsxLimits | None = None,
    ) -> None:
        self.max_field_bytes = max_field_bytes
        self.max_record_bytes = max_record_bytes
        self.max_record_lines = max_record_lines
        self._stream, self._owned, size = _open_binary(source)
        self.progress = ReadProgress(size=size)
        head = self._stream.read(SAMPLE_BYTES)
        complete = len(head) < SAMPLE_BYTES
        if self._stream.seekable():
            self._stream.seek(self._stream.tell() - len(head))
            body: IO[bytes] = self._stream
        else:
            body = _ChainedReader(head, self._stream)
        self._body = body
        self._records: Iterator[Record]
        if head.startswith(XLSX_MAGIC):
            from contacts.imports.xlsxparse import open_workbook  # it builds on our records

            self._workbook, headers, self._records = open_workbook(
                body, limits=xlsx_limits, max_field_bytes=max_field_bytes, progress=self.progress
            )
            self.info = SourceInfo(kind="xlsx", encoding="xlsx", delimiter=None, headers=headers)
            return
        if encoding in ("", "auto", None):
            chosen = detect_encoding(head, complete=complete)
        else:
            chosen = canonical_encoding(encoding)
        text_sample = head.decode(chosen, errors="replace").lstrip("\ufeff")
        detected_delimiter = delimiter or detect_delimiter(text_sample)
        self._init_text(chosen, detected_delimiter)

    # -- text files -------------------------------------------------------------------------
    def _init_text(self, encoding: str, delimiter: str) -> None:
        lines = _physical_lines(self._body, encoding, self.max_record_bytes, self.progress)
        logical = _logical_records(lines, delimiter, self.max_record_bytes, self.max_record_lines)
        headers: tuple[str, ...] | None = None
        for text, line_no, reason, detail in logical:
            if text is not None and not text.strip():
                continue
            if reason is not None or text is None:
                raise ImportFileError(f"cannot read the header on line {line_no}: {detail}")
            fields = next(csv.reader([text], delimiter=delimiter, strict=False))
            fields[0] = fields[0].lstrip("\ufeff")
            problem = _check_fields(fields, self.max_field_bytes)
            if problem:
                raise ImportFileError(f"cannot read the header on line {line_no}: {problem[1]}")
            headers = tuple(name.strip() for name in fields)
            break
        if headers is None:
            raise ImportFileError("the file is empty (no header line)")
        self.info = SourceInfo(kind="csv", encoding=encoding, delimiter=delimiter, headers=headers)
        self._records = self._text_records(logical, delimiter)

    def _text_records(self, logical, delimiter: str) -> Iterator[Record]:
        max_field = self.max_field_bytes
        for text, line_no, reason, detail in logical:
            if reason is not None or text is None:
                yield Record(line_no, reason=reason, detail=detail)
                continue
            if not text.strip():
                continue  # blank lines are not records
            try:
                fields = next(csv.reader([text], delimiter=delimiter, strict=False))
            except csv.Error as exc:
                yield Record(line_no, reason=RejectReason.MALFORMED_ROW, detail=str(exc))
                continue
            problem = _check_fields(fields, max_field)
            if problem:
                yield Record(line_no, reason=problem[0], detail=problem[1])
                continue
            yield Record(line_no, tuple(fields))

    # -- protocol ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Record]:
        for record in self._records:
            self.progress.records += 1
            yield record

    def close(self) -> None:
        workbook = getattr(self, "_workbook", None)
        if workbook is not None:
            workbook.close()
        if self._owned:
            self._stream.close()

    def __enter__(self) -> ContactFileReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- column mapping -------------------------------------------------------------------------

EMAIL = "email"
NAME = "name"
FIRST_NAME = "first_name"
LAST_NAME = "last_name"
SKIP = "skip"
CORE_TARGETS = (EMAIL, NAME, FIRST_NAME, LAST_NAME, SKIP)

_HEADER_GUESSES = {
    EMAIL: {
        "email",
        "e-mail",
        "e_mail",
        "mail",
        "emailaddress",
        "mailaddress",
        "emailadres",
        "courriel",
        "adresseemail",
        "adressemail",
        "adresseelectronique",
        "adresseélectronique",
        "correo",
        "correoelectronico",
        "correoelectrónico",
        "emailadresse",
        "邮箱",
        "电子邮件",
        "邮件地址",
        "电子邮箱",
        "邮件",
        "email地址",
        "郵箱",
        "電子郵件",
        "メール",
        "メールアドレス",
    },
    NAME: {
        "name",
        "fullname",
        "displayname",
        "contactname",
        "nom",
        "nomcomplet",
        "nombre",
        "姓名",
        "名字",
        "名称",
        "名前",
        "氏名",
    },
    FIRST_NAME: {
        "firstname",
        "givenname",
        "forename",
        "first",
        "prenom",
        "prénom",
        "vorname",
        "名",
    },
    LAST_NAME: {"lastname", "surname", "familyname", "last", "nomdefamille", "nachname", "姓"},
    "phone": {
        "phone",
        "mobile",
        "tel",
        "telephone",
        "phonenumber",
        "手机",
        "电话",
        "手机号",
        "手机号码",
        "联系电话",
        "電話",
    },
    "city": {"city", "town", "ville", "stadt", "ciudad", "城市", "所在城市"},
    "company": {"company", "organization", "organisation", "公司", "单位", "公司名称"},
    "country": {"country", "pays", "land", "país", "国家"},
    "province": {"province", "state", "省份", "省"},
    "gender": {"gender", "sex", "性别"},
}
_HEADER_TO_TARGET = {
    alias: target for target, aliases in _HEADER_GUESSES.items() for alias in aliases
}
_SQUASH = re.compile(r"[\s_\-.:：/]+")
_SLUG = re.compile(r"[^\w]+")


def attribute_key(header: str) -> str:
    """A stable attribute key for a header: lower-case slug, Chinese (any \\w) kept as-is."""
    slug = _SLUG.sub("_", header.strip().lower()).strip("_")
    return slug or "column"


def guess_mapping(headers: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Map each header to email, name, first_name, last_name or an attribute key."""
    mapping: dict[str, str] = {}
    taken: set[str] = set()
    for header in headers:
        if not header:
            mapping[header] = SKIP
            continue
        squashed = _SQUASH.sub("", header.strip().lower())
        target = _HEADER_TO_TARGET.get(squashed) or _HEADER_TO_TARGET.get(header.strip().lower())
        if target is None:
            target = attribute_key(header)
        if target in taken and target in CORE_TARGETS:
            target = attribute_key(header)  # a second "email" column becomes an attribute
        if target in taken:
            target = f"{target}_{len(taken)}"
        taken.add(target)
        mapping[header] = target
    return mapping


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """Column indexes resolved from a mapping, for fast per-row extraction."""

    email: int | None
    name: int | None
    first_name: int | None
    last_name: int | None
    attributes: tuple[tuple[int, str], ...]


def plan_columns(headers: tuple[str, ...], mapping: dict[str, str] | None) -> ColumnPlan:
    """Resolve a header->target mapping (guessed where not given) to column indexes."""
    guessed = guess_mapping(headers)
    if mapping:
        guessed.update({key: value for key, value in mapping.items() if key in guessed})
    core: dict[str, int] = {}
    attributes: list[tuple[int, str]] = []
    for index, header in enumerate(headers):
        target = (guessed.get(header) or SKIP).strip()
        if target == SKIP:
            continue
        if target in CORE_TARGETS:
            core.setdefault(target, index)
        else:
            attributes.append((index, attribute_key(target)))
    if EMAIL not in core:
        raise ImportFileError(
            "no email column found; map one of the columns to email "
            f"(headers: {', '.join(headers)})"
        )
    return ColumnPlan(
        email=core.get(EMAIL),
        name=core.get(NAME),
        first_name=core.get(FIRST_NAME),
        last_name=core.get(LAST_NAME),
        attributes=tuple(attributes),
    )


def _is_cjk(text: str) -> bool:
    return any("\u3040" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" for ch in text)


def compose_name(first: str, last: str) -> str:
    """Join first and last names; CJK names are family name first without a space."""
    first, last = first.strip(), last.strip()
    if not first or not last:
        return first or last
    if _is_cjk(first + last):
        return f"{last}{first}"
    return f"{first} {last}"


@dataclass(frozen=True, slots=True)
class Preview:
    info: SourceInfo
    mapping: dict[str, str]
    rows: list[Record]


def preview_file(
    source: str | os.PathLike | IO[bytes], *, encoding: str = "auto", limit: int = 10
) -> Preview:
    """Detected encoding and delimiter, the guessed mapping and the first ``limit`` records."""
    with ContactFileReader(source, encoding=encoding) as reader:
        rows: list[Record] = []
        for record in reader:
            rows.append(record)
            if len(rows) >= limit:
                break
        return Preview(info=reader.info, mapping=guess_mapping(reader.info.headers), rows=rows)


class SeenAddresses:
    """First line of each address already read, keyed by a 64-bit hash of the address.

    An open-addressing table in two ``array('q')`` (16 bytes a slot, at most 2/3 full): about
    32 MB for 10^6 addresses where a dict of int objects takes over 100 MB. The dict-like
    ``setdefault`` is the only operation ``contact_rows`` needs.
    """

    __slots__ = ("_hashes", "_lines", "_mask", "_count")

    def __init__(self, capacity: int = 1 << 14) -> None:
        size = 1 << max(4, (capacity - 1).bit_length())
        self._hashes = array("q", bytes(8 * size))  # 0 marks an empty slot
        self._lines = array("q", bytes(8 * size))
        self._mask = size - 1
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def setdefault(self, key: int, line: int) -> int:
        """The line stored for ``key``, storing ``line`` first if the key is new."""
        key = _signed64(key) or 1
        hashes, mask = self._hashes, self._mask
        slot = key & mask
        while True:
            stored = hashes[slot]
            if stored == key:
                return self._lines[slot]
            if not stored:
                break
            slot = (slot + 1) & mask
        hashes[slot] = key
        self._lines[slot] = line
        self._count += 1
        if self._count * 3 > mask * 2:
            self._grow()
        return line

    def _grow(self) -> None:
        old_hashes, old_lines = self._hashes, self._lines
        size = (self._mask + 1) * 2
        hashes = array("q", bytes(8 * size))
        lines = array("q", bytes(8 * size))
        mask = size - 1
        for stored, line in zip(old_hashes, old_lines, strict=True):
            if stored:
                slot = stored & mask
                while hashes[slot]:
                    slot = (slot + 1) & mask
                hashes[slot] = stored
                lines[slot] = line
        self._hashes, self._lines, self._mask = hashes, lines, mask


def _signed64(value: int) -> int:
    # str hashes already fit (Py_hash_t); anything wider is folded, not rejected.
    if -(1 << 63) <= value < (1 << 63):
        return value
    return ((value + (1 << 63)) % (1 << 64)) - (1 << 63)


class ContactRow(NamedTuple):
    """A valid, normalized row ready to be written (a tuple: built twice as fast as a frozen
    dataclass, which counts at a million rows)."""

    line: int
    email: str
    name: str
    attributes: dict[str, str]


def contact_rows(
    records: Iterator[Record],
    plan: ColumnPlan,
    *,
    policy: EmailPolicy | None = None,
    seen: SeenAddresses | dict[int, int] | None = None,
) -> Iterator[ContactRow | Record]:
    """Turn records into ContactRow, or Record rejects with a reason, in file order.

    Duplicates inside the file are found case-insensitively on the normalized address; the
    first occurrence wins. ``seen`` maps hash(lower-cased address) to its first line (a
    SeenAddresses by default: about 32 MB for a million-row file). A 64-bit hash collision,
    about 1 in 10^7 for 10^6 rows, would reject one valid row as a duplicate; it is reported
    with the line it collided with.
    """
    seen = SeenAddresses() if seen is None else seen
    email_at = plan.email
    for record in records:
        if record.reason is not None:
            yield record
            continue
        fields = record.fields
        raw_email = fields[email_at] if email_at < len(fields) else ""
        try:
            email = normalize_email(raw_email, policy=policy)
        except InvalidEmail as exc:
            yield _invalid_email(record, raw_email, exc)
            continue
        first_line = seen.setdefault(hash(email_key(email)), record.line)
        if first_line != record.line:
            yield Record(
                record.line,
                reason=RejectReason.DUPLICATE_IN_FILE,
                detail=f"same address as line {first_line}",
            )
            continue
        name, attributes = _name_and_attributes(fields, plan)
        yield ContactRow(record.line, email, name[:300], attributes)


def _invalid_email(record: Record, raw_email: str, exc: InvalidEmail) -> Record:
    """The reject of a row whose address does not normalize (the address quoted, bounded)."""
    detail = exc.detail
    if exc.reason is RejectReason.INVALID_EMAIL:
        detail = f"{raw_email.strip()[:100]!r}: {exc.detail}"
    return Record(record.line, reason=exc.reason, detail=detail)


def _name_and_attributes(fields: tuple[str, ...], plan: ColumnPlan) -> tuple[str, dict[str, str]]:
    """A row's name (from first and last name when it has none) and its non-empty attributes.

    One call per row of the import's hot path: the columns are read by index, a short row
    reads as empty cells.
    """
    width = len(fields)
    name_at, first_at, last_at = plan.name, plan.first_name, plan.last_name
    name = fields[name_at].strip() if name_at is not None and name_at < width else ""
    attributes: dict[str, str] = {}
    if first_at is not None or last_at is not None:
        first = fields[first_at].strip() if first_at is not None and first_at < width else ""
        last = fields[last_at].strip() if last_at is not None and last_at < width else ""
        if first:
            attributes[FIRST_NAME] = first
        if last:
            attributes[LAST_NAME] = last
        if not name:
            name = compose_name(first, last)
    for index, key_name in plan.attributes:
        if index < width:
            value = fields[index].strip()
            if value:
                attributes[key_name] = value
    return name, attributes
