"""Byte-level MIME composition checked with the stdlib's strict parser."""

import email.policy
import re
from email.header import decode_header, make_header
from email.parser import BytesParser

import pytest

from mailkit.compose import (
    Attachment,
    Composer,
    MessageSpec,
    make_message_id,
    needs_smtputf8,
    sanitize_header_value,
)
from mailkit.errors import InvalidAddressError, InvalidHeaderError
from mailkit.render import RenderedContent

SPEC = MessageSpec(
    from_email="news@example.com",
    from_name="张三 Shop",
    reply_to="help@example.com",
    list_id="Newsletter <newsletter.42.example.com>",
    campaign_id=42,
    extra_headers=(("X-Campaign-Tag", "spring"),),
)


def _compose(
    *, subject="Hello", html="<p>Hi</p>", text="Hi", to_name="Bob", to="bob@example.org", **kw
):
    kw.setdefault("message_id", make_message_id(domain="example.com", delivery_id=7))
    return Composer(kw.pop("spec", SPEC)).compose(
        to_email=to,
        to_name=to_name,
        content=RenderedContent(subject=subject, html=html, text=text),
        **kw,
    )


def _parse(raw: bytes, policy=email.policy.strict):
    message = BytesParser(policy=policy).parsebytes(raw)
    for part in message.walk():
        assert not part.defects, part.defects
    return message


def _assert_wire_safe(raw: bytes):
    assert b"\r\n\r\n" in raw
    assert re.search(rb"(?<!\r)\n", raw) is None, "bare LF"
    assert re.search(rb"\r(?!\n)", raw) is None, "bare CR"
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


def test_structure_and_headers():
    raw = _compose(
        unsubscribe_url="https://example.com/u/tok",
        unsubscribe_mailto="unsub@example.com",
        delivery_reference="7.abcdefghijklmnop",
        date=0,
    )
    _assert_wire_safe(raw)
    message = _parse(raw)
    assert message["MIME-Version"] == "1.0"
    assert message["Date"] == "Thu, 01 Jan 1970 00:00:00 +0000"
    assert message["Message-ID"].endswith("@example.com>")
    assert str(message["From"]) == "张三 Shop <news@example.com>"
    assert message["Reply-To"] == "help@example.com"
    assert message["List-Id"] == "Newsletter <newsletter.42.example.com>"
    assert message["List-Unsubscribe"] == "<https://example.com/u/tok>, <mailto:unsub@example.com>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["X-Skylark-Campaign"] == "42"
    assert message["X-Skylark-Delivery"] == "7.abcdefghijklmnop"
    assert message["X-Campaign-Tag"] == "spring"
    assert message.get_content_type() == "multipart/alternative"
    plain, html = message.get_payload()
    assert plain.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    assert plain.get_content_charset() == "utf-8"


def test_one_click_only_with_an_http_url():
    message = _parse(_compose(unsubscribe_mailto="unsub@example.com"))
    assert message["List-Unsubscribe"] == "<mailto:unsub@example.com>"
    assert message["List-Unsubscribe-Post"] is None


def test_chinese_subject_round_trips_and_is_folded():
    subject = "你好，张三！这是一封很长的中文主题邮件，用来测试折叠和编码是否正确无误。" * 3
    raw = _compose(subject=subject)
    _assert_wire_safe(raw)
    head = raw.split(b"\r\n\r\n")[0]
    subject_lines = head.split(b"Subject:")[1].split(b"\r\nDate:")[0].split(b"\r\n")
    assert len(subject_lines) > 3
    assert all(len(line) <= 78 for line in subject_lines)
    assert str(make_header(decode_header(_parse(raw, email.policy.compat32)["Subject"]))) == subject
    assert _parse(raw)["Subject"] == subject


def test_long_ascii_subject_is_folded_and_round_trips():
    subject = " ".join(f"word{i}" for i in range(80))
    message = _parse(_compose(subject=subject))
    assert message["Subject"] == subject


@pytest.mark.parametrize(
    "hostile",
    [
        "x\r\nBcc: evil@attacker.test",
        "x\nBcc: evil@attacker.test",
        "x\rBcc: evil@attacker.test",
        "x\x00Bcc: evil@attacker.test",
        "x\u2028Bcc: evil@attacker.test",
        "x\u0085Bcc: evil@attacker.test",
        "=?utf-8?b?DQpCY2M6IGV2aWxAYXR0YWNrZXIudGVzdA==?=",  # decodes to CRLF Bcc: ...
        '"evil@attacker.test", <evil2@attacker.test>',
    ],
)
def test_header_injection_adds_no_header_and_no_recipient(hostile):
    raw = _compose(subject=hostile, to_name=hostile, text=hostile, html=hostile)
    _assert_wire_safe(raw)
    message = _parse(raw)
    assert message["Bcc"] is None
    assert len(message.get_all("To")) == 1
    assert [a.addr_spec for a in message["To"].addresses] == ["bob@example.org"]
    assert b"\nBcc:" not in raw.split(b"\r\n\r\n")[0]


@pytest.mark.parametrize(
    "address",
    [
        "bob@example.org\r\nBcc: x@y.z",
        "bob@example.org,eve@example.org",
        "<bob@example.org>",
        '"bob"@example.org',
        "bob",
        "bob@@example.org",
        "bob smith@example.org",
        "bob@exa mple.org",
    ],
)
def test_bad_addresses_are_rejected(address):
    with pytest.raises(InvalidAddressError):
        _compose(to=address)


def test_display_names_are_quoted_when_needed():
    message = _parse(_compose(to_name='Bob "the" Builder, Jr.'))
    assert message["To"].addresses[0].display_name == 'Bob "the" Builder, Jr.'
    assert message["To"].addresses[0].addr_spec == "bob@example.org"


def test_dots_from_lines_and_newlines_in_bodies_are_encoded():
    body = ".\nFrom here\r\n..two\rlast" + " trailing  \n" + "x" * 3000
    raw = _compose(text=body, html=body)
    _assert_wire_safe(raw)
    assert b"\r\n.\r\n" not in raw and b"\r\nFrom " not in raw
    plain, html = _parse(raw).get_payload()
    expected = ".\nFrom here\n..two\nlast trailing  \n" + "x" * 3000 + "\n"
    assert plain.get_content().replace("\r\n", "\n") == expected
    assert html.get_content().replace("\r\n", "\n") == expected


def test_chinese_body_round_trips():
    body = "亲爱的张三：\n感谢您的订阅。" * 200
    plain, html = _parse(_compose(text=body, html=f"<p>{body}</p>")).get_payload()
    assert plain.get_content().replace("\r\n", "\n") == body + "\n"
    assert html["Content-Transfer-Encoding"] == "base64"


def test_internationalized_local_part_is_raw_utf8_and_needs_smtputf8():
    raw = _compose(to="用户@例子.中国")
    assert "用户@xn--fsqu00a.xn--fiqs8s".encode() in raw
    assert needs_smtputf8("用户@example.org", "a@example.com")
    assert not needs_smtputf8("bob@例子.中国", "a@example.com")


def test_message_id_is_unique_and_in_domain():
    ids = {make_message_id(domain="example.com", delivery_id=1) for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("<1.") and i.endswith("@example.com>") for i in ids)
    with pytest.raises(InvalidHeaderError):
        _compose(message_id="<a@b>\r\nBcc: x@y.z")


def test_sanitize_header_value():
    assert sanitize_header_value("a\r\nb\x00c\u2028d\u2029e\x1bf\tg") == "a b c d e f g"


def test_extra_headers_cannot_override_structural_ones():
    with pytest.raises(InvalidHeaderError):
        Composer(MessageSpec(from_email="a@example.com", extra_headers=(("Bcc", "x@y.z"),)))
    with pytest.raises(InvalidHeaderError):
        Composer(MessageSpec(from_email="a@example.com", extra_headers=(("X-A\r\nB", "v"),)))


def test_unsafe_unsubscribe_url_is_rejected():
    with pytest.raises(InvalidHeaderError):
        _compose(unsubscribe_url="https://x.test/a>, <https://evil.test")


# --- attachments and inline images ----------------------------------------------------------

PNG = bytes(range(256)) * 40  # binary, 10,240 bytes
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 3


def _parts(message):
    return [part.get_content_type() for part in message.walk()]


def test_without_attachments_the_structure_is_unchanged():
    raw = _compose(attachments=())
    assert _parts(_parse(raw)) == ["multipart/alternative", "text/plain", "text/html"]


def test_attachment_goes_in_multipart_mixed_around_the_alternative():
    raw = _compose(attachments=[Attachment("invoice.pdf", "application/pdf", PDF)])
    _assert_wire_safe(raw)
    message = _parse(raw)
    assert _parts(message) == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/html",
        "application/pdf",
    ]
    alternative, pdf = message.get_payload()
    assert pdf.get_filename() == "invoice.pdf"
    assert pdf.get_content_disposition() == "attachment"
    assert pdf["Content-Transfer-Encoding"] == "base64"
    assert pdf.get_content() == PDF
    assert message.get_body(("html",)).get_content().strip() == "<p>Hi</p>"
    # The plain-text and HTML bodies are still found as such by a reader.
    assert message.get_body(("plain",)).get_content().strip() == "Hi"
    assert [a.get_filename() for a in message.iter_attachments()] == ["invoice.pdf"]


def test_inline_image_goes_in_multipart_related_with_the_html():
    html = '<p><img src="cid:logo@skylark" alt="logo"></p>'
    raw = _compose(
        html=html, attachments=[Attachment("logo.png", "image/png", PNG, "logo@skylark")]
    )
    _assert_wire_safe(raw)
    message = _parse(raw)
    assert _parts(message) == [
        "multipart/alternative",
        "text/plain",
        "multipart/related",
        "text/html",
        "image/png",
    ]
    related = message.get_payload()[1]
    assert related.get_param("type") == "text/html"
    html_part, image = related.get_payload()
    assert html_part.get_content().strip() == html
    assert image["Content-ID"] == "<logo@skylark>"
    assert image.get_content_disposition() == "inline"
    assert image.get_content() == PNG
    assert message.get_body(("html",)).get_content().strip() == html


def test_inline_images_and_attachments_together():
    raw = _compose(
        html='<img src="cid:a"><img src="cid:b">',
        attachments=[
            Attachment("a.png", "image/png", PNG, "<a>"),
            Attachment("terms.pdf", "application/pdf", PDF),
            Attachment("b.gif", "image/gif", b"GIF89a", "b"),
        ],
    )
    _assert_wire_safe(raw)
    message = _parse(raw)
    assert _parts(message) == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "multipart/related",
        "text/html",
        "image/png",
        "image/gif",
        "application/pdf",
    ]
    images = message.get_payload()[0].get_payload()[1].get_payload()[1:]
    assert [i["Content-ID"] for i in images] == ["<a>", "<b>"]


def test_base64_lines_are_76_characters():
    raw = _compose(attachments=[Attachment("big.bin", "application/octet-stream", PNG * 10)])
    body = raw.split(b"Content-Disposition: attachment", 1)[1].split(b"\r\n\r\n", 1)[1]
    lines = body.split(b"--=_sky_m_")[0].split(b"\r\n")
    lines = [line for line in lines if line]
    assert len(lines) > 100
    assert all(len(line) == 76 for line in lines[:-1])
    assert len(lines[-1]) <= 76


@pytest.mark.parametrize(
    "filename",
    [
        "报价单 2024.pdf",
        "Überweisung März.pdf",
        "a" * 120 + ".pdf",
        "季度报告" * 15 + ".xlsx",
        "quote 'final'; v2.pdf",
        "semi;colon=equals.txt",
    ],
    ids=["chinese", "german", "long-ascii", "long-chinese", "quotes", "specials"],
)
def test_filenames_round_trip_with_rfc2231_where_needed(filename):
    raw = _compose(attachments=[Attachment(filename, "application/pdf", PDF)])
    _assert_wire_safe(raw)
    assert raw.isascii()
    head = raw.split(b"Content-Disposition: attachment", 1)[1].split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    if not filename.isascii():
        assert b"filename*=utf-8''" in head or b"filename*0*=utf-8''" in head
    (attachment,) = _parse(raw).iter_attachments()
    assert attachment.get_filename() == filename
    # Content-Type's name is the ASCII fallback for clients without RFC 2231.
    fallback = attachment.get_param("name")
    assert fallback.isascii() and fallback.endswith(filename.rpartition(".")[2])
    # A ";" becomes "_" there: quoted, it ends the parameter for readers that split on it.
    expected = filename.replace(";", "_")
    assert fallback == expected or not filename.isascii() or len(filename) > 60


def test_paths_and_controls_are_stripped_from_filenames():
    raw = _compose(attachments=[Attachment("../../etc/pass\r\nwd", "text/plain", b"x")])
    (attachment,) = _parse(raw).iter_attachments()
    assert attachment.get_filename() == "pass wd"
    assert b"\r\nwd" not in raw


@pytest.mark.parametrize(
    "attachment",
    [
        Attachment("a.pdf", "application/pdf\r\nBcc: x@y.z", b"x"),
        Attachment("a.pdf", "pdf", b"x"),
        Attachment("a.pdf", "multipart/mixed", b"x"),
        Attachment("a.png", "image/png", b"x", content_id="a>\r\nBcc: x@y.z"),
    ],
)
def test_hostile_content_types_and_ids_are_rejected(attachment):
    with pytest.raises(InvalidHeaderError):
        _compose(attachments=[attachment])


def test_attachments_are_encoded_once_per_composer():
    composer = Composer(SPEC)
    attachment = Attachment("a.pdf", "application/pdf", PDF)
    content = RenderedContent(subject="s", html="<p>h</p>", text="t")
    for _ in range(3):
        composer.compose(
            to_email="bob@example.org",
            to_name="",
            content=content,
            message_id=make_message_id(domain="example.com"),
            attachments=[attachment],
        )
    assert list(composer._attachment_parts) == [attachment]
