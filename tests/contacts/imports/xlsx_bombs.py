"""Workbooks written part by part, as an attacker (or Excel) would: bombs and odd but legal files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path
from xml.sax.saxutils import escape

MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
RELS = "http://schemas.openxmlformats.org/package/2006/relationships"
DOC_RELS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
DECLARATION = b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'

Part = bytes | Iterable[bytes]


def sheet_xml(
    rows: Iterable[bytes], *, dimension: str = "", prefix: bytes = b""
) -> Iterable[bytes]:
    """A worksheet part around ``rows`` (already serialized <row> elements)."""
    yield DECLARATION + prefix + f'<worksheet xmlns="{MAIN}">'.encode()
    if dimension:
        yield f'<dimension ref="{dimension}"/>'.encode()
    yield b"<sheetData>"
    yield from rows
    yield b"</sheetData></worksheet>"


def shared_xml(strings: Iterable[bytes], *, prefix: bytes = b"") -> Iterable[bytes]:
    """A shared strings part around ``strings`` (already serialized <si> elements)."""
    yield DECLARATION + prefix + f'<sst xmlns="{MAIN}">'.encode()
    yield from strings
    yield b"</sst>"


def row(number: int, *cells: str, shared: dict[str, int] | None = None) -> bytes:
    """A <row> of string cells, shared (by index in ``shared``) or inline."""
    parts = [f'<row r="{number}">']
    for column, value in enumerate(cells):
        ref = f"{chr(65 + column)}{number}"
        if shared is not None:
            parts.append(f'<c r="{ref}" t="s"><v>{shared[value]}</v></c>')
        else:
            parts.append(f'<c r="{ref}" t="inlineStr"><is><t>{escape(value)}</t></is></c>')
    parts.append("</row>")
    return "".join(parts).encode()


def _content_types(shared: bool, styles: bool) -> bytes:
    ml = "application/vnd.openxmlformats-officedocument.spreadsheetml"
    overrides = [("/xl/workbook.xml", "sheet.main"), ("/xl/worksheets/sheet1.xml", "worksheet")]
    if shared:
        overrides.append(("/xl/sharedStrings.xml", "sharedStrings"))
    if styles:
        overrides.append(("/xl/styles.xml", "styles"))
    return (
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
        'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>'
        + "".join(
            f'<Override PartName="{name}" ContentType="{ml}.{kind}+xml"/>'
            for name, kind in overrides
        )
        + "</Types>"
    ).encode()


def write_xlsx(
    path: Path,
    *,
    sheet: Part,
    shared: Part | None = None,
    styles: Part | None = None,
    date1904: bool = False,
    extra: Iterable[tuple[str, Part]] = (),
    level: int = 6,
) -> Path:
    """A workbook whose big parts are streamed into the archive (never held whole)."""
    rels = [f'<Relationship Id="rId1" Type="{DOC_RELS}/worksheet" Target="worksheets/sheet1.xml"/>']
    if shared is not None:
        rels.append(
            f'<Relationship Id="rId2" Type="{DOC_RELS}/sharedStrings" Target="sharedStrings.xml"/>'
        )
    if styles is not None:
        rels.append(f'<Relationship Id="rId3" Type="{DOC_RELS}/styles" Target="styles.xml"/>')
    pr = '<workbookPr date1904="1"/>' if date1904 else ""
    parts: list[tuple[str, Part]] = [
        ("[Content_Types].xml", _content_types(shared is not None, styles is not None)),
        (
            "_rels/.rels",
            f'<Relationships xmlns="{RELS}"><Relationship Id="rId1" '
            f'Type="{DOC_RELS}/officeDocument" Target="xl/workbook.xml"/></Relationships>'.encode(),
        ),
        (
            "xl/workbook.xml",
            (
                f'<workbook xmlns="{MAIN}" xmlns:r="{DOC_RELS}">{pr}<sheets>'
                '<sheet name="Contacts" sheetId="1" r:id="rId1"/></sheets></workbook>'
            ).encode(),
        ),
        (
            "xl/_rels/workbook.xml.rels",
            f'<Relationships xmlns="{RELS}">{"".join(rels)}</Relationships>'.encode(),
        ),
        ("xl/worksheets/sheet1.xml", sheet),
    ]
    if shared is not None:
        parts.append(("xl/sharedStrings.xml", shared))
    if styles is not None:
        parts.append(("xl/styles.xml", styles))
    parts.extend(extra)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
        for name, content in parts:
            with zf.open(name, "w", force_zip64=True) as member:
                for chunk in [content] if isinstance(content, bytes) else content:
                    member.write(chunk)
    return path


def lie_about_sizes(path: Path, member: str, declared: int) -> None:
    """Rewrite the uncompressed size the central directory gives for ``member`` (below 4 GB)."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    at = 0
    while True:
        at = data.find(b"PK\x01\x02", at)
        assert at >= 0, "central directory entry not found"
        name_len = int.from_bytes(data[at + 28 : at + 30], "little")
        if data[at + 46 : at + 46 + name_len] == name:
            break
        at += 4
    assert data[at + 24 : at + 28] != b"\xff\xff\xff\xff", "a zip64 entry"
    data[at + 24 : at + 28] = declared.to_bytes(4, "little")
    path.write_bytes(bytes(data))


READ_IN_A_CHILD = """
import json, os, resource, sys, time
import django
django.setup()
from contacts.imports.csvparse import ContactFileReader
from contacts.errors import ImportFileError
started = time.monotonic()
result = {}
try:
    with ContactFileReader(sys.argv[1]) as reader:
        result["rows"] = sum(1 for _ in reader)
except ImportFileError as exc:
    result["refused"] = str(exc)
result["seconds"] = round(time.monotonic() - started, 2)
result["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(result))
"""


def read_in_a_child(path: Path, *, timeout: float = 60, env: dict[str, str] | None = None) -> dict:
    """Read a workbook with the importer's reader in a fresh process: its result, time, peak RSS.

    The child may use at most 2 GB of address space, so a bomb that gets through fails fast
    instead of taking the machine's memory.
    """

    def limit_memory() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    completed = subprocess.run(
        [sys.executable, "-c", READ_IN_A_CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit_memory,  # noqa: PLW1509 - no threads started before the fork
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **(env or {})},
        cwd=Path(__file__).resolve().parents[3],
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def many_entries_zip(path: Path, entries: int) -> Path:
    """A zip whose central directory lists ``entries`` names (all pointing at one empty file)."""
    import struct

    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, 1, 0) + b"a"
    directory = b"".join(
        struct.pack(
            "<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0
        )
        + f"{n:06d}".encode()
        for n in range(entries)
    )
    end = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, entries, entries, len(directory), len(local), 0
    )
    path.write_bytes(local + directory + end)
    return path
