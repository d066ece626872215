"""XLSX decompression bombs against the real importer, its reader and the admin preview."""

from __future__ import annotations

import datetime as dt
import os
import tracemalloc
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from openpyxl import load_workbook

from contacts.errors import ImportFileError, WorkbookRefused
from contacts.imports import contacts_import
from contacts.imports.csvparse import (
    ContactFileReader,
    ContactRow,
    Record,
    contact_rows,
    plan_columns,
)
from contacts.imports.xlsxparse import cell_text
from contacts.models import Contact, ContactList, ImportJob, ImportStatus
from contacts.normalize import RejectReason
from tests.contacts.imports.xlsx_bombs import (
    DECLARATION,
    lie_about_sizes,
    many_entries_zip,
    read_in_a_child,
    row,
    shared_xml,
    sheet_xml,
    write_xlsx,
)

PEAK_MB = 300


@pytest.fixture(scope="module")
def shared_strings_bomb(tmp_path_factory):
    """The issue's bomb: about 1.1 MB on disk, a 510 MB shared strings part."""
    path = tmp_path_factory.mktemp("bombs") / "shared-bomb.xlsx"
    block = (b"<si><t>" + b"A" * 1000 + b"</t></si>") * 1000
    return write_xlsx(
        path,
        sheet=sheet_xml([row(1, "email"), b'<row r="2"><c r="A2" t="s"><v>0</v></c></row>']),
        shared=shared_xml(block for _ in range(510)),
        level=9,
    )


def _import(path, **kwargs):
    contact_list, _created = ContactList.objects.get_or_create(name="Bombs")
    return contacts_import(source=path, contact_list=contact_list, mode="upsert", **kwargs)


# -- the archive ------------------------------------------------------------------------------


def test_shared_strings_bomb_is_refused_before_it_is_decompressed(shared_strings_bomb):
    assert shared_strings_bomb.stat().st_size < 2 * 1024 * 1024
    result = read_in_a_child(shared_strings_bomb, timeout=30)
    assert "is compressed" in result["refused"] and "xl/sharedStrings.xml" in result["refused"]
    assert result["peak_mb"] < PEAK_MB


def test_bomb_whose_central_directory_lies_about_its_size_reads_only_what_it_declares(
    shared_strings_bomb, tmp_path
):
    liar = tmp_path / "liar.xlsx"
    liar.write_bytes(shared_strings_bomb.read_bytes())
    lie_about_sizes(liar, "xl/sharedStrings.xml", 1024 * 1024)
    result = read_in_a_child(liar, timeout=30)
    assert result["refused"].startswith("Cannot open the workbook")  # the CRC does not match
    assert result["peak_mb"] < PEAK_MB


def test_part_under_the_ratio_but_over_the_size_limit_is_refused(tmp_path):
    # Random digits compress about 2 times: only the absolute limit can stop this one.
    rows = (row(n, os.urandom(2000).hex()) for n in range(1, 3001))
    path = write_xlsx(tmp_path / "big.xlsx", sheet=sheet_xml(rows), level=1)
    result = read_in_a_child(path, env={"EDM_IMPORT_XLSX_MAX_MB": "8"})
    assert result["refused"].startswith("The workbook expands to more than 8 MB")
    assert result["peak_mb"] < PEAK_MB


@pytest.mark.django_db
def test_duplicate_part_names_are_refused(tmp_path):
    path = write_xlsx(
        tmp_path / "twice.xlsx",
        sheet=sheet_xml([row(1, "email"), row(2, "a@example.com")]),
        extra=[("xl/worksheets/sheet1.xml", b"<worksheet/>")],
    )
    with pytest.raises(WorkbookRefused, match="contains the part xl/worksheets/sheet1.xml twice"):
        _import(path)


@pytest.mark.django_db
def test_too_many_parts_are_refused(tmp_path):
    path = write_xlsx(
        tmp_path / "parts.xlsx",
        sheet=sheet_xml([row(1, "email")]),
        extra=[(f"xl/media/{n}.bin", b"") for n in range(10_000)],
    )
    with pytest.raises(WorkbookRefused, match="at most 10000 are accepted"):
        _import(path)


def test_huge_central_directory_is_refused_before_zipfile_parses_it(tmp_path):
    # 60,000 entries: zipfile would build an object for each before anything could count them.
    path = many_entries_zip(tmp_path / "entries.xlsx", 60_000)
    tracemalloc.start()
    try:
        with pytest.raises(WorkbookRefused, match="has 60000 parts; at most 10000"):
            ContactFileReader(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * 1024 * 1024


# -- XML inside the parts ------------------------------------------------------------------------

_LAUGHS = (
    b'<!DOCTYPE sst [<!ENTITY a "ha">'
    + b"".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'.encode() for i in range(9)
    )
    + b"]>"
)
_WIDE_ENTITY = b'<!DOCTYPE sst [<!ENTITY w "' + b"W" * 50_000 + b'">]>'
_EXTERNAL = b'<!DOCTYPE sst [<!ENTITY x SYSTEM "file:///etc/passwd">]>'


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("prefix", "reference"),
    [(_LAUGHS, b"&j;"), (_WIDE_ENTITY, b"&w;" * 20), (_EXTERNAL, b"&x;")],
    ids=["billion-laughs", "amplification", "external-entity"],
)
def test_entities_in_shared_strings_are_refused(tmp_path, prefix, reference):
    strings = [b"<si><t>email</t></si>"] + [b"<si><t>" + reference + b"</t></si>"] * 2000
    path = write_xlsx(
        tmp_path / "laughs.xlsx",
        sheet=sheet_xml([row(1, "email", shared={"email": 0})]),
        shared=shared_xml(strings, prefix=prefix),
    )
    with pytest.raises(WorkbookRefused, match="contains a document type, entities"):
        _import(path)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "rows",
    [
        # A 3 MB attribute (random, so it compresses badly): expat would hold it whole.
        [row(1, "email"), b'<row r="2" x="' + os.urandom(1_500_000).hex().encode() + b'"/>'],
        # Elements nested 100,000 deep.
        [row(1, "email"), b"<x>" * 100_000 + b"</x>" * 100_000],
        # A comment, where "<" may hide inside and expat holds it whole.
        [row(1, "email"), b"<!-- <row> -->", row(2, "a@example.com")],
        [row(1, "email"), b"<?pi data?>", row(2, "a@example.com")],
    ],
    ids=["long-tag", "deep-nesting", "comment", "processing-instruction"],
)
def test_tags_nesting_and_markup_excel_never_writes_are_refused(tmp_path, rows):
    path = write_xlsx(tmp_path / "odd.xlsx", sheet=sheet_xml(rows))
    with pytest.raises(WorkbookRefused):
        _import(path)


# -- the sheet ---------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.timeout(30)
def test_huge_declared_dimension_and_far_rows_cost_nothing(tmp_path):
    # The 23 KB workbook: it declares A1:XFD1048576 and has its last row at 1,048,576.
    rows = [
        row(1, "email", "name"),
        row(2, "a@example.com", "A"),
        row(1_048_576, "not-an-address", "Z"),
    ]
    path = write_xlsx(tmp_path / "dim.xlsx", sheet=sheet_xml(rows, dimension="A1:XFD1048576"))
    summary = _import(path)
    assert (summary.created, summary.rejected) == (1, 1)
    assert summary.rejected_rows[0][:2] == (1_048_576, RejectReason.INVALID_EMAIL)
    result = read_in_a_child(path, timeout=20)
    assert result["rows"] == 2 and result["peak_mb"] < PEAK_MB


@pytest.mark.django_db
@pytest.mark.timeout(30)
def test_row_numbered_beyond_the_limit_is_refused(tmp_path):
    rows = [
        row(1, "email"),
        b'<row r="99999999"><c r="A99999999" t="inlineStr"><is><t>a</t></is></c></row>',
    ]
    path = write_xlsx(tmp_path / "far.xlsx", sheet=sheet_xml(rows))
    with pytest.raises(WorkbookRefused, match="more than 1048576 rows"):
        _import(path)


@pytest.mark.django_db
@pytest.mark.timeout(30)
def test_cells_far_apart_reject_their_row_and_the_rest_is_imported(tmp_path):
    far = (
        f'<row r="{n}"><c r="A{n}" t="inlineStr"><is><t>u{n}@example.com</t></is></c>'
        f'<c r="XFD{n}" t="inlineStr"><is><t>x</t></is></c></row>'.encode()
        for n in range(2, 20_002)
    )
    rows = [row(1, "email"), *far, row(20_002, "kept@example.com")]
    path = write_xlsx(tmp_path / "sparse.xlsx", sheet=sheet_xml(rows))
    summary = _import(path)
    assert (summary.created, summary.rejected) == (1, 20_000)
    line, reason, detail = summary.rejected_rows[0][:3]
    assert (line, reason) == (2, RejectReason.MALFORMED_ROW)
    assert detail == "a cell in column 16384, beyond the 1024 columns that are read"


@pytest.mark.django_db
def test_header_wider_than_the_limit_is_refused(tmp_path):
    rows = [
        b'<row r="1"><c r="A1" t="inlineStr"><is><t>email</t></is></c><c r="XFD1"><v>1</v></c></row>'
    ]
    path = write_xlsx(tmp_path / "wide.xlsx", sheet=sheet_xml(rows))
    with pytest.raises(ImportFileError, match="Cannot read the header on row 1: a cell in column"):
        _import(path)


def test_a_million_empty_rows_are_read_in_seconds_with_bounded_memory(tmp_path):
    empty = (
        b"".join(f'<row r="{n}"/>'.encode() for n in range(start, start + 100_000))
        for start in range(2, 1_000_002, 100_000)
    )
    rows = [row(1, "email"), *empty, row(1_000_002, "last@example.com")]
    path = write_xlsx(tmp_path / "empty.xlsx", sheet=sheet_xml(rows))
    result = read_in_a_child(path, timeout=30)
    assert result == {**result, "rows": 1}
    assert result["peak_mb"] < PEAK_MB


@pytest.mark.django_db
def test_shared_strings_beyond_their_count_or_size_are_refused(tmp_path, settings):
    strings = [b"<si><t>email</t></si>"] + [
        f"<si><t>u{n}@example.com 𠀀{os.urandom(100).hex()}</t></si>".encode() for n in range(5000)
    ]
    path = write_xlsx(
        tmp_path / "strings.xlsx",
        sheet=sheet_xml([row(1, "email", shared={"email": 0})]),
        shared=shared_xml(strings),
    )
    settings.EDM_IMPORT_XLSX_MAX_SHARED_STRINGS = 1000
    with pytest.raises(WorkbookRefused, match="more than 1000 shared strings"):
        _import(path)
    settings.EDM_IMPORT_XLSX_MAX_SHARED_STRINGS = 10_000
    settings.EDM_IMPORT_XLSX_MAX_SHARED_MB = 1  # 5,000 strings of 200+ astral-wide characters
    with pytest.raises(WorkbookRefused, match="shared strings take more than 1 MB"):
        _import(path)


@pytest.mark.django_db
def test_cell_longer_than_excel_allows_rejects_only_its_row(tmp_path):
    strings = [b"<si><t>email</t></si>", b"<si><t>" + b"x" * 40_000 + b"@example.com</t></si>"]
    rows = [
        row(1, "email", shared={"email": 0}),
        b'<row r="2"><c r="A2" t="s"><v>1</v></c></row>',
        b'<row r="3"><c r="A3" t="s"><v>7</v></c></row>',  # no such string
        row(4, "ok@example.com"),
    ]
    path = write_xlsx(tmp_path / "long.xlsx", sheet=sheet_xml(rows), shared=shared_xml(strings))
    summary = _import(path)
    assert summary.created == 1
    assert [entry[:3] for entry in summary.rejected_rows] == [
        (2, RejectReason.FIELD_TOO_LARGE, "column 1 is longer than 32767 characters"),
        (
            3,
            RejectReason.MALFORMED_ROW,
            "column 1 refers to a shared string that is not in the workbook",
        ),
    ]


# -- the admin preview ---------------------------------------------------------------------------


@pytest.fixture
def admin_client(client, django_user_model, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    user = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(user)
    return client


def _preview(admin_client, path):
    upload = SimpleUploadedFile("book.xlsx", path.read_bytes())
    response = admin_client.post(
        reverse("admin:contacts_importjob_upload"),
        {"file": upload, "new_list_name": "XL", "mode": "upsert", "encoding": "auto"},
    )
    assert response.status_code == 302
    return admin_client.get(response["Location"]), ImportJob.objects.latest("pk")


@pytest.mark.django_db
@pytest.mark.timeout(30)
def test_admin_preview_refuses_the_shared_strings_bomb_and_cannot_start_it(
    admin_client, shared_strings_bomb
):
    response, job = _preview(admin_client, shared_strings_bomb)
    assert response.status_code == 200
    assert "is compressed" in response.context["error"]
    started = admin_client.post(
        reverse("admin:contacts_importjob_preview", args=[job.pk]),
        {"encoding": "auto", "col_0": "email", "start": "1"},
    )
    assert started.status_code == 200
    job.refresh_from_db()
    assert job.status == ImportStatus.PENDING and job.started_at is None


@pytest.mark.django_db
@pytest.mark.timeout(30)
def test_admin_preview_of_a_huge_declared_sheet_is_quick_and_small(admin_client, tmp_path):
    rows = [row(1, "email"), row(1_048_576, "far@example.com")]
    path = write_xlsx(tmp_path / "dim.xlsx", sheet=sheet_xml(rows, dimension="A1:XFD1048576"))
    tracemalloc.start()
    try:
        response, job = _preview(admin_client, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert response.status_code == 200 and response.context["error"] is None
    assert 'data-line="1048576"' in response.content.decode()
    assert peak < 50 * 1024 * 1024
    started = admin_client.post(
        reverse("admin:contacts_importjob_preview", args=[job.pk]),
        {"encoding": "auto", "col_0": "email", "start": "1"},
    )
    assert started.status_code == 302
    job.refresh_from_db()
    assert job.options["expected_rows"] == 1_048_575  # the declared size, capped


# -- legitimate workbooks ------------------------------------------------------------------------

_STYLES = (
    DECLARATION + b'<styleSheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
    b'<numFmts count="1"><numFmt numFmtId="164" formatCode="yyyy-mm-dd hh:mm"/></numFmts>'
    b'<cellStyleXfs count="1"><xf numFmtId="14"/></cellStyleXfs>'
    b'<cellXfs count="4"><xf numFmtId="0"/><xf numFmtId="14"/><xf numFmtId="164"/>'
    b'<xf numFmtId="46"/></cellXfs></styleSheet>'
)


@pytest.mark.parametrize("date1904", [False, True], ids=["1900", "1904"])
def test_excel_style_workbook_reads_as_openpyxl_reads_it(tmp_path, date1904):
    strings = [
        "<si><t>邮箱</t></si>",
        "<si><t>姓名</t></si>",
        '<si><r><rPr><b/></rPr><t xml:space="preserve">张 </t></r><r><t>伟</t></r></si>',
        "<si><t>𠀀𪚥 GB18030</t><rPh sb='0' eb='1'><t>フリ</t></rPh></si>",
        "<si><t>a_x005F_x000D_b</t></si>",
        "<si><t>zhang@example.com</t></si>",
    ]
    cells = (
        '<row r="1" spans="1:8"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c>'
        '<c r="C1" t="inlineStr"><is><t>joined</t></is></c><c r="D1" t="inlineStr"><is><t>at'
        '</t></is></c><c r="E1" t="inlineStr"><is><t>n</t></is></c><c r="F1" t="inlineStr">'
        '<is><t>ok</t></is></c><c r="G1" t="inlineStr"><is><t>f</t></is></c>'
        '<c r="H1" t="inlineStr"><is><t>note</t></is></c></row>'
        '<row r="3"><c r="A3" t="s"><v>5</v></c><c r="B3" t="s"><v>2</v></c>'
        '<c r="C3" s="1"><v>45292</v></c><c r="D3" s="2"><v>45356.395833333336</v></c>'
        '<c r="E3"><v>31.5</v></c><c r="F3" t="b"><v>1</v></c>'
        '<c r="G3" t="str"><f>A3&amp;"!"</f><v>zhang@example.com!</v></c>'
        '<c r="H3" t="s"><v>3</v></c></row>'
        '<row r="4"><c r="A4" t="inlineStr"><is><t>li@example.com</t></is></c>'
        '<c r="B4" t="s"><v>4</v></c><c r="D4" s="3"><v>1.5</v></c><c r="E4"><v>40</v></c>'
        '<c r="F4" t="e"><v>#N/A</v></c><c r="H4"><v>1E-3</v></c></row>'
    )
    path = write_xlsx(
        tmp_path / "excel.xlsx",
        sheet=sheet_xml([cells.encode()]),
        shared=shared_xml(s.encode() for s in strings),
        styles=_STYLES,
        date1904=date1904,
    )
    with ContactFileReader(path) as reader:
        ours = [reader.info.headers] + [record.fields for record in reader]
    workbook = load_workbook(path, read_only=True, data_only=True)
    theirs = [
        tuple(cell_text(value) for value in values)
        for values in workbook.worksheets[0].iter_rows(values_only=True)
    ]
    workbook.close()
    theirs = [tuple(_trim(values)) for values in theirs if any(values)]
    assert ours == theirs
    assert ours[1][:4] == (
        "zhang@example.com",
        "张 伟",
        "2028-01-02" if date1904 else "2024-01-01",
        "2028-03-06T09:30:00" if date1904 else "2024-03-05T09:30:00",
    )


def _trim(values):
    values = list(values)
    while values and not values[-1]:
        values.pop()
    return values


@pytest.mark.django_db(transaction=True)
def test_fifty_thousand_row_workbook_with_chinese_headers_imports(tmp_path):
    cities = ["北京", "上海", "广州", "深圳"]
    strings = [f"<si><t>{value}</t></si>".encode() for value in ["邮箱", "姓名", "城市", *cities]]
    index = {"邮箱": 0, "姓名": 1, "城市": 2, **{city: 3 + i for i, city in enumerate(cities)}}

    def rows():
        yield b'<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c><c r="C1" t="s"><v>2</v></c></row>'
        for n in range(2, 50_002):
            yield (
                f'<row r="{n}"><c r="A{n}" t="inlineStr"><is><t>user{n}@example.cn</t></is></c>'
                f'<c r="B{n}" t="inlineStr"><is><t>王芳{n}</t></is></c>'
                f'<c r="C{n}" t="s"><v>{index[cities[n % 4]]}</v></c></row>'
            ).encode()

    path = write_xlsx(tmp_path / "big.xlsx", sheet=sheet_xml(rows()), shared=shared_xml(strings))
    started = dt.datetime.now()
    summary = _import(path)
    assert (summary.created, summary.rejected) == (50_000, 0)
    assert Contact.objects.get(email="user6@example.cn").attributes == {"city": "广州"}
    assert dt.datetime.now() - started < dt.timedelta(seconds=60)


def test_rows_and_records_keep_excel_row_numbers(tmp_path):
    rows = [row(2, "email"), row(5, "a@example.com"), row(9, "b@example.com")]
    path = write_xlsx(tmp_path / "gaps.xlsx", sheet=sheet_xml(rows))
    with ContactFileReader(path) as reader:
        records = list(contact_rows(iter(reader), plan_columns(reader.info.headers, None)))
    assert [(r.line, type(r)) for r in records] == [(5, ContactRow), (9, ContactRow)]
    assert not [r for r in records if isinstance(r, Record)]


def test_non_seekable_upload_is_spooled_and_read(tmp_path):
    path = write_xlsx(
        tmp_path / "s.xlsx", sheet=sheet_xml([row(1, "email"), row(2, "a@example.com")])
    )

    class Pipe:
        def __init__(self, data: bytes) -> None:
            self._data = data

        def seekable(self) -> bool:
            return False

        def read(self, size: int = -1) -> bytes:
            size = len(self._data) if size is None or size < 0 else size
            chunk, self._data = self._data[:size], self._data[size:]
            return chunk

    with ContactFileReader(Pipe(path.read_bytes())) as reader:
        assert [record.fields for record in reader] == [("a@example.com",)]


def test_zip_members_are_never_opened_as_workbooks(tmp_path):
    # Zip in zip: an inner archive is a part like any other, never decompressed.
    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("x.xml", "x" * 1000)
    path = write_xlsx(
        tmp_path / "outer.xlsx",
        sheet=sheet_xml([row(1, "email"), row(2, "a@example.com")]),
        extra=[("xl/embeddings/inner.zip", inner.read_bytes())],
    )
    with ContactFileReader(path) as reader:
        assert [record.fields for record in reader] == [("a@example.com",)]
