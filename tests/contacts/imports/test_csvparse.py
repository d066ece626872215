"""The streaming reader: encodings, delimiters, line numbers, limits (pure, no database)."""

from __future__ import annotations

import io
import tracemalloc

import pytest
from openpyxl import Workbook

from contacts.errors import ImportFileError
from contacts.imports.csvparse import (
    ContactFileReader,
    ContactRow,
    Record,
    SeenAddresses,
    contact_rows,
    detect_encoding,
    guess_mapping,
    plan_columns,
    preview_file,
)
from contacts.normalize import RejectReason

CHINESE = (
    "邮箱,姓名,城市\nzhang.wei@example.com,张伟,北京\nli.na@example.com,李娜,上海\n"
    + "".join(f"user{i}@example.cn,王芳{i},广州\n" for i in range(20))
)


def read_all(data: bytes, **kwargs) -> tuple[ContactFileReader, list[ContactRow | Record]]:
    mapping = kwargs.pop("mapping", None)
    with ContactFileReader(io.BytesIO(data), **kwargs) as reader:
        plan = plan_columns(reader.info.headers, mapping)
        return reader, list(contact_rows(iter(reader), plan))


def valid(rows):
    return [row for row in rows if isinstance(row, ContactRow)]


def rejected(rows):
    return [(row.line, row.reason, row.detail) for row in rows if isinstance(row, Record)]


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (CHINESE.encode("utf-8"), "utf-8"),
        (b"\xef\xbb\xbf" + CHINESE.encode("utf-8"), "utf-8-sig"),
        (CHINESE.encode("utf-16"), "utf-16"),  # with BOM, native order
        (b"\xff\xfe" + CHINESE.encode("utf-16-le"), "utf-16"),
        (b"\xfe\xff" + CHINESE.encode("utf-16-be"), "utf-16"),
        (CHINESE.encode("gb18030"), "gb18030"),
        (CHINESE.encode("gbk"), "gb18030"),
    ],
)
def test_chinese_headers_are_read_in_every_encoding(data, encoding):
    reader, rows = read_all(data)
    assert reader.info.encoding == encoding
    assert reader.info.headers == ("邮箱", "姓名", "城市")
    good = valid(rows)
    assert len(good) == 22
    assert (good[0].email, good[0].name, good[0].attributes) == (
        "zhang.wei@example.com",
        "张伟",
        {"city": "北京"},
    )
    assert good[1].name == "李娜"


def test_big5_file_is_detected_and_decoded():
    text = "郵箱,姓名,城市\n" + "".join(f"chan{i}@example.hk,陳大文{i},臺北\n" for i in range(20))
    reader, rows = read_all(text.encode("big5"))
    assert reader.info.encoding == "big5"
    assert reader.info.headers == ("郵箱", "姓名", "城市")
    assert [row.name for row in valid(rows)][:2] == ["陳大文0", "陳大文1"]
    assert valid(rows)[0].attributes == {"city": "臺北"}


def test_shift_jis_file_is_detected_and_decoded():
    text = "メールアドレス,名前\n" + "".join(
        f"tanaka{i}@example.jp,田中太郎{i}\n" for i in range(20)
    )
    reader, rows = read_all(text.encode("shift_jis"))
    assert reader.info.encoding in {"shift_jis", "cp932"}
    assert len(valid(rows)) == 20
    assert valid(rows)[0].name == "田中太郎0"


def test_latin1_file_is_detected_and_decoded():
    text = "email;name\n" + "".join(
        f"p{i}@example.fr;José Müller Françoise {i}\n" for i in range(20)
    )
    reader, rows = read_all(text.encode("latin-1"))
    assert reader.info.encoding in {"cp1252", "latin_1", "iso8859-1"}
    assert reader.info.delimiter == ";"
    assert valid(rows)[0].name == "José Müller Françoise 0"


@pytest.mark.parametrize(
    ("text", "encoding", "city"),
    [
        # One accented byte before a letter is also a valid Big5/GB18030 double byte ("K闤n").
        ("email;name;city\nann@example.com;Ann;Köln\n", "cp1252", "Köln"),
        ("email,name,city\nann@example.com,Ann,北京\n", "gb18030", "北京"),
        ("email,name,city\nann@example.com,Ann,iPhone手机\n", "gb18030", "iPhone手机"),
    ],
)
def test_a_tiny_file_is_not_read_in_a_codec_that_glues_cjk_into_latin_words(text, encoding, city):
    reader, rows = read_all(text.encode(encoding))
    assert valid(rows)[0].attributes == {"city": city}


def test_explicit_encoding_overrides_detection():
    data = "email,name\na@example.com,José\n".encode("latin-1")
    reader, rows = read_all(data, encoding="latin-1")
    assert reader.info.encoding == "iso8859-1"
    assert valid(rows)[0].name == "José"


def test_gbk_is_widened_to_gb18030():
    assert detect_encoding(CHINESE.encode("gbk")) == "gb18030"


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_delimiters_are_detected(delimiter):
    data = delimiter.join(["email", "name", "plan"]) + "\n"
    data += "".join(
        delimiter.join([f"u{i}@example.com", f"User {i}", "pro"]) + "\n" for i in range(5)
    )
    reader, rows = read_all(data.encode())
    assert reader.info.delimiter == delimiter
    assert [row.email for row in valid(rows)] == [f"u{i}@example.com" for i in range(5)]
    assert valid(rows)[0].attributes == {"plan": "pro"}


def test_quoted_line_breaks_keep_physical_line_numbers():
    data = (
        b"email,name,note\r\n"  # line 1
        b'a@example.com,A,"first\r\nsecond\r\nthird"\r\n'  # lines 2-4
        b"not-an-email,B,x\r\n"  # line 5
        b'c@example.com,"C, ""quoted""",y\r\n'  # line 6
        b"also bad,D,z\r\n"  # line 7
    )
    reader, rows = read_all(data)
    assert [(row.line, row.email) for row in valid(rows)] == [
        (2, "a@example.com"),
        (6, "c@example.com"),
    ]
    assert valid(rows)[0].attributes["note"] == "first\r\nsecond\r\nthird"
    assert valid(rows)[1].name == 'C, "quoted"'
    assert [(line, reason) for line, reason, _ in rejected(rows)] == [
        (5, RejectReason.INVALID_EMAIL),
        (7, RejectReason.INVALID_EMAIL),
    ]


def test_duplicates_in_different_case_reject_later_rows_with_first_line():
    data = b"email\nAnn@Example.com\nbob@example.com\nann@example.COM\nANN@EXAMPLE.COM\n"
    _, rows = read_all(data)
    assert [row.email for row in valid(rows)] == ["Ann@example.com", "bob@example.com"]
    assert rejected(rows) == [
        (4, RejectReason.DUPLICATE_IN_FILE, "same address as line 2"),
        (5, RejectReason.DUPLICATE_IN_FILE, "same address as line 2"),
    ]


def test_undecodable_bytes_reject_only_their_row():
    data = (
        "email,name\na@example.com,张伟\n".encode()
        + b"b@example.com,\xff\xfe bad\n"
        + ("c@example.com,李娜\n" * 1).encode()
        + "".join(f"u{i}@example.com,王芳\n" for i in range(10)).encode()
    )
    reader, rows = read_all(data)
    assert reader.info.encoding == "utf-8"
    assert len(valid(rows)) == 12
    assert rejected(rows) == [(3, RejectReason.UNDECODABLE, "undecodable bytes at column 2")]
    assert all("\ufffd" not in row.name for row in valid(rows))


def test_undecodable_bytes_in_explicit_encoding_are_rejected_not_mojibake():
    data = b"email,name\n" + "a@example.com,张伟\n".encode("gb18030") + b"b@example.com,\x80\n"
    _, rows = read_all(data, encoding="gb18030")
    assert [row.name for row in valid(rows)] == ["张伟"]
    assert rejected(rows) == [(3, RejectReason.UNDECODABLE, "undecodable bytes at column 2")]


def test_nul_bytes_reject_the_row():
    _, rows = read_all(b"email,name\na@example.com,A\nb@example.com,B\x00B\nc@example.com,C\n")
    assert len(valid(rows)) == 2
    assert rejected(rows) == [(3, RejectReason.NUL_BYTE, "NUL byte at column 2")]


def test_huge_field_is_rejected_and_reading_goes_on():
    data = b"email,note\na@example.com," + b"x" * 70_000 + b"\nb@example.com,ok\n"
    _, rows = read_all(data, max_field_bytes=64 * 1024)
    assert [row.email for row in valid(rows)] == ["b@example.com"]
    assert rejected(rows) == [
        (2, RejectReason.FIELD_TOO_LARGE, "column 2 is larger than 65536 bytes")
    ]


def test_unmatched_quote_rejects_its_line_without_eating_the_rest():
    data = b'email,name\na@example.com,"never closed\nb@example.com,B\nc@example.com,C\n'
    _, rows = read_all(data, max_record_lines=10)
    assert [row.email for row in valid(rows)] == ["b@example.com", "c@example.com"]
    assert rejected(rows) == [(2, RejectReason.MALFORMED_ROW, "unmatched quote")]


def test_unmatched_quote_on_a_long_file_is_bounded_by_record_lines():
    body = "".join(f"u{i}@example.com,U\n" for i in range(50))
    data = ('email,name\nx@example.com,"open\n' + body).encode()
    _, rows = read_all(data, max_record_lines=5)
    assert len(valid(rows)) == 50
    assert rejected(rows) == [(2, RejectReason.MALFORMED_ROW, "unmatched quote")]


class _NoLineBreakStream(io.RawIOBase):
    """A header, then ``size`` bytes without a line break, generated on the fly."""

    def __init__(self, size: int) -> None:
        self.header = b"email,name\n"
        self.remaining = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.header:
            n = min(len(buffer), len(self.header))
            buffer[:n] = self.header[:n]
            self.header = self.header[n:]
            return n
        n = min(len(buffer), self.remaining)
        buffer[:n] = b"a" * n
        self.remaining -= n
        return n


def test_file_without_line_break_ends_in_one_error_with_bounded_memory():
    size = 20 * 1024 * 1024
    tracemalloc.start()
    try:
        with ContactFileReader(
            io.BufferedReader(_NoLineBreakStream(size)), max_record_bytes=256 * 1024
        ) as reader:
            records = list(reader)
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert records == [
        Record(2, reason=RejectReason.MALFORMED_ROW, detail="record too large (no line break)")
    ]
    assert reader.progress.bytes_read == size + len(b"email,name\n")
    assert peak < 8 * 1024 * 1024


def test_xlsx_first_sheet_is_read_with_row_numbers(tmp_path):
    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["E-mail", "Full name", "手机", "Age"])
    sheet.append(["a@example.com", "张伟", "13800000000", 31])
    sheet.append(["broken", "B", None, None])
    sheet.append(["A@EXAMPLE.com", "dup", None, None])
    sheet.append(["c@example.com", "C", None, 40.0])
    path = tmp_path / "contacts.xlsx"
    workbook.save(path)
    with ContactFileReader(path) as reader:
        assert reader.info.kind == "xlsx"
        plan = plan_columns(reader.info.headers, None)
        rows = list(contact_rows(iter(reader), plan))
    assert [(row.line, row.email, row.attributes) for row in valid(rows)] == [
        (2, "a@example.com", {"phone": "13800000000", "age": "31"}),
        (5, "c@example.com", {"age": "40"}),
    ]
    assert [(line, reason) for line, reason, _ in rejected(rows)] == [
        (3, RejectReason.INVALID_EMAIL),
        (4, RejectReason.DUPLICATE_IN_FILE),
    ]


def test_xlsx_date_cells_read_as_dates_and_times_as_date_times(tmp_path):
    import datetime as dt

    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["email", "joined", "last_login"])
    sheet.append(["a@example.com", dt.datetime(2024, 1, 1), dt.datetime(2024, 3, 5, 9, 30)])
    path = tmp_path / "dates.xlsx"
    workbook.save(path)
    with ContactFileReader(path) as reader:
        rows = list(contact_rows(iter(reader), plan_columns(reader.info.headers, None)))
    assert valid(rows)[0].attributes == {
        "joined": "2024-01-01",
        "last_login": "2024-03-05T09:30:00",
    }


def test_mapping_guesses_french_and_german_headers():
    headers = ("Adresse e-mail", "Prénom", "Nom de famille", "Ville", "Adresse", "Pays")
    assert guess_mapping(headers) == {
        "Adresse e-mail": "email",
        "Prénom": "first_name",
        "Nom de famille": "last_name",
        "Ville": "city",
        "Adresse": "adresse",  # a postal address, not an email column
        "Pays": "country",
    }
    assert guess_mapping(("E-Mail-Adresse", "Vorname", "Nachname", "Nom"))["Nom"] == "name"


def test_mapping_guesses_english_and_chinese_headers():
    headers = (
        "E-mail",
        "First name",
        "Last name",
        "电话",
        "城市",
        "公司",
        "Favourite Colour",
        "爱好",
    )
    assert guess_mapping(headers) == {
        "E-mail": "email",
        "First name": "first_name",
        "Last name": "last_name",
        "电话": "phone",
        "城市": "city",
        "公司": "company",
        "Favourite Colour": "favourite_colour",
        "爱好": "爱好",
    }


def test_first_and_last_names_are_combined():
    _, rows = read_all(
        "mail,First Name,Last Name\na@example.com,John,Doe\nb@example.com,伟,张\n".encode()
    )
    assert [row.name for row in valid(rows)] == ["John Doe", "张伟"]


def test_explicit_mapping_overrides_the_guess():
    data = b"contact,who,notes\na@example.com,Ann,vip\n"
    _, rows = read_all(data, mapping={"contact": "email", "who": "name", "notes": "skip"})
    assert [(row.email, row.name, row.attributes) for row in valid(rows)] == [
        ("a@example.com", "Ann", {})
    ]


def test_no_email_column_is_a_file_error():
    with pytest.raises(ImportFileError, match="no email column"):
        read_all(b"name,city\nAnn,Paris\n")


def test_preview_reports_detection_and_first_rows():
    preview = preview_file(io.BytesIO(CHINESE.encode("gb18030")), limit=10)
    assert preview.info.encoding == "gb18030"
    assert preview.info.delimiter == ","
    assert preview.mapping == {"邮箱": "email", "姓名": "name", "城市": "city"}
    assert len(preview.rows) == 10
    assert preview.rows[0].fields == ("zhang.wei@example.com", "张伟", "北京")


def test_seen_addresses_keeps_the_first_line_of_each_key_across_growth():
    seen = SeenAddresses(capacity=16)
    for key in range(1, 5001):
        assert seen.setdefault(key * 7919, key) == key
    assert len(seen) == 5000
    assert seen.setdefault(7919 * 42, 99_999) == 42
    assert seen.setdefault(-1, 5) == 5  # negative hashes are keys like any other
    assert seen.setdefault(0, 6) == 6  # 0 (the empty-slot marker) is stored as 1
    assert seen.setdefault(1, 7) == 6  # ... so it collides with 1, the documented price
    assert seen.setdefault((1 << 70) + 3, 8) == 8  # wider than 64 bits: folded, not an error


def test_seen_addresses_is_several_times_smaller_than_a_dict():
    keys = [hash(f"user{i}@example.com") for i in range(100_000)]
    tracemalloc.start()
    seen = SeenAddresses()
    for line, key in enumerate(keys, start=2):
        seen.setdefault(key, line)
    table_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    # 2^18 slots of 16 bytes (4 MB); a dict of int objects is about 10 MB for 10^5 keys.
    assert table_bytes < 5_000_000


def test_duplicates_are_found_after_the_table_grows():
    rows = "".join(f"u{i}@example.com\n" for i in range(40_000)) + "U7@EXAMPLE.COM\n"
    _, items = read_all(("email\n" + rows).encode())
    rejected = [item for item in items if isinstance(item, Record)]
    assert [(r.line, r.reason, r.detail) for r in rejected] == [
        (40_002, RejectReason.DUPLICATE_IN_FILE, "same address as line 9")
    ]
