"""Hostile attachment filenames: decoded, cleaned and encoded so that no receiver is misled."""

from __future__ import annotations

import base64
import email.policy
from email.parser import BytesParser

import pytest

from mailkit.attachments import (
    attachment_content_id,
    attachment_content_type,
    clean_filename,
    filename_params,
)
from mailkit.compose import Attachment, Composer, MessageSpec, make_message_id
from mailkit.errors import InvalidHeaderError
from mailkit.render import RenderedContent
from tests.mail_readers import assert_received_safely, received_filenames

_NESTED = "=?utf-8?b?" + base64.b64encode(b"=?utf-8?b?Li4vLi4vZXZpbC5leGU=?=").decode() + "?="

HOSTILE = {
    # The two of the issue: a receiver decodes them to ../../evil.exe and to a CRLF.
    "b-encoded-path": "=?utf-8?b?Li4vLi4vZXZpbC5leGU=?=",
    "q-encoded-crlf": "=?utf-8?q?x=0D=0ABcc:_victim@example.org=0D=0A=0D=0A.txt?=",
    "q-encoded-path": "=?UTF-8?Q?..=2F..=2Fevil.exe?=",
    "nested-words": _NESTED,
    "split-words": "=?utf-8?b?Li4v?= =?utf-8?b?Li4v?= =?utf-8?q?evil.exe?=",
    "word-inside-text": "report=?utf-8?q?=2F..=2F..?=evil.exe",
    "unknown-charset": "=?x-unknown?b?Li4vLi4vZXZpbC5leGU=?=",
    "utf-7": "=?utf-7?q?+AC8ALwAv-evil.exe?=",
    "rfc2231-language": "=?utf-8*en?b?Li4vZXZpbC5leGU=?=",
    "malformed-base64": "=?utf-8?b?Li4vLi4v ZXZpbC5leGU?=",
    "percent": "%2e%2e%2f%2e%2e%2fevil.exe",
    "double-percent": "%252e%252e%252fevil.exe",
    "percent-crlf": "evil%0d%0aContent-Type:%20text%2fhtml.txt",
    "rfc2231-value": "utf-8''%2E%2E%2F%2E%2E%2Fevil.exe",
    "rfc2231-continuations": "filename*0*=utf-8''%2E%2E%2F; filename*1*=%2E%2E%2Fevil.exe",
    "rfc2231-of-word": "utf-8''%3D%3Futf-8%3Fb%3FLi4vLi4vZXZpbC5leGU%3D%3F%3D",
    "fullwidth-solidus": "..\uff0f..\uff0fevil.exe",
    "fullwidth-reverse-solidus": "..\uff3c..\uff3cevil.exe",
    "division-slash": "..\u2215..\u2215evil.exe",
    "fraction-slash": "..\u2044evil.exe",
    "small-reverse-solidus": "..\ufe68evil.exe",
    "windows-path": "C:\\Windows\\System32\\evil.dll",
    "unc-path": "\\\\attacker.example\\share\\evil.exe",
    "bidi-override": "invoice\u202egpj.exe",
    "bidi-isolate": "photo\u2067\u2066exe.jpg",
    "zero-width": "evil\u200b.\u200dexe",
    "crlf": "a.pdf\r\nContent-Type: text/html\r\n\r\n<script>",
    "nul-del-c1": "a\x00b\x7fc\x85d.txt",
    "line-separator": "a\u2028b\u2029c.txt",
    "quote-breakout": 'a.pdf"; filename="../../evil.exe',
    # Quoted, a ";" ends the parameter for readers that split on it before unquoting.
    "semicolon-parameter": "a.txt; filename=evil.exe",
    "semicolon-extended-parameter": "a.txt;filename*=utf-8''evil.exe",
    "q-encoded-semicolon": "=?utf-8?q?a.txt=3B_filename=3Devil.exe?=",
    "lone-surrogate": "x\ud800y.txt",
    "ads-colon": "report.txt:evil.exe",
    "dot-file": ".bashrc",
    "dots-only": "..",
    "trailing-dots": "evil.exe. . .",
    "device-con": "CON.txt",
    "device-nul": "nul",
    "device-com-superscript": "COM\u00b9.txt",
    "device-lpt-spaces": "LPT9  .log",
    "empty": "",
    "only-controls": "\r\n\t\x00",
    "long": "A" * 5000 + ".pdf",
    "long-chinese": "报告" * 400 + ".xlsx",
    "nfkc-expansion": "\ufdfa" * 300 + ".txt",
}


def _compose(attachments):
    composer = Composer(MessageSpec(from_email="shop@example.com"))
    return composer.compose(
        to_email="ann@example.org",
        to_name="Ann",
        content=RenderedContent(subject="Files", html="<p>files</p>", text="files"),
        message_id=make_message_id(domain="example.com"),
        attachments=attachments,
    )


@pytest.mark.parametrize("filename", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_filename_reaches_every_reader_as_only_a_name(filename):
    raw = _compose([Attachment(filename, "application/octet-stream", b"MZ payload")])
    assert raw.isascii()
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    strict = BytesParser(policy=email.policy.strict).parsebytes(raw)
    assert not [defect for part in strict.walk() for defect in part.defects]
    views = assert_received_safely(raw, 1)
    # Every reader agrees on the name: a filter must not see one name and a client another.
    assert len({names[0] for reader, names in views.items() if reader != "python-compat32"}) == 1


def test_the_issue_names_arrive_as_plain_names():
    raw = _compose(
        [
            Attachment(HOSTILE["b-encoded-path"], "application/octet-stream", b"x"),
            Attachment(HOSTILE["q-encoded-crlf"], "text/plain", b"x"),
            Attachment(HOSTILE["bidi-override"], "application/octet-stream", b"x"),
            Attachment(HOSTILE["device-con"], "text/plain", b"x"),
        ]
    )
    views = assert_received_safely(raw, 4)
    assert views["python-default"] == [
        "evil.exe",
        "x Bcc_ victim@example.org .txt",
        "invoicegpj.exe",  # the real extension shows
        "_CON.txt",
    ]
    assert views["fast-mail-parser (Rust mailparse)"] == views["python-default"]


@pytest.mark.parametrize("filename", HOSTILE.values(), ids=HOSTILE.keys())
def test_cleaning_is_stable_and_bounded(filename):
    cleaned = clean_filename(filename)
    assert clean_filename(cleaned) == cleaned
    assert cleaned and len(cleaned.encode()) <= 200
    assert "?" not in cleaned  # no encoded word can be left in it
    if filename.endswith((".pdf", ".xlsx", ".txt")) and len(filename) > 200:
        assert cleaned.endswith("." + filename.rpartition(".")[2])


@pytest.mark.parametrize(
    ("filename", "fallback"),
    [
        ("报价单 2024.pdf", "2024.pdf"),
        ("Überweisung März.pdf", "Uberweisung Marz.pdf"),
        ("季度报告.xlsx", "attachment.xlsx"),
    ],
)
def test_a_non_ascii_name_is_rfc2231_with_an_ascii_fallback_of_the_same_type(filename, fallback):
    type_param, disposition_param = filename_params(clean_filename(filename))
    assert type_param == f';\r\n name="{fallback}"'
    assert disposition_param.startswith(";\r\n filename*=utf-8''")
    raw = _compose([Attachment(filename, "application/pdf", b"%PDF")])
    for reader, names in received_filenames(raw).items():
        assert names == [filename], reader
    (part,) = BytesParser(policy=email.policy.compat32).parsebytes(raw).get_payload()[1:]
    assert part.get_param("name") == fallback


@pytest.mark.parametrize(
    ("content_type", "content_id"),
    [
        ("application/pdf\r\nBcc: victim@example.org", ""),
        ("application/pdf\r\n", ""),
        ("text/html; charset=utf-7", ""),
        ('application/pdf; name="evil.exe"', ""),
        ("image/png", "logo\r\nBcc: victim@example.org"),
        ("image/png", "logo@x>\r\nContent-Type: text/html"),
        ("image/png", "logo@x; name=evil.exe"),
        ("image/png", "<logo@x>\n"),
    ],
)
def test_a_content_type_or_id_carrying_a_line_break_or_parameters_is_refused(
    content_type, content_id
):
    with pytest.raises(InvalidHeaderError):
        _compose([Attachment("a.png", content_type, b"x", content_id)])


def test_clean_content_types_and_ids_pass():
    assert attachment_content_type(" Image/PNG ") == "image/png"
    assert attachment_content_id("<logo@shop.example>") == "logo@shop.example"
