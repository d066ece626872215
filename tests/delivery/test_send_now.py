"""One message sent now through the default route: signing, envelope, addresses."""

from __future__ import annotations

import dkim
import pytest

from delivery.models import DkimKey
from delivery.services import message_send_now
from mailkit.dkim import dkim_txt_record, generate_dkim_key
from mailkit.smtp import SendStatus

MESSAGE = (
    b"From: News <news@skylark.test>\r\nTo: anna@b\xc3\xbccher.example\r\n"
    b"Subject: Hello\r\nMessage-ID: <1@skylark.test>\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHi.\r\n"
)


@pytest.fixture
def no_utf8_server(smtp_server_factory, settings):
    server = smtp_server_factory(smtputf8=False, users={"skylark": "secret"})
    settings.EDM_SMTP_URL = server.url
    settings.EDM_SMTP_TLS_CA_FILE = server.ca_file
    return server


@pytest.mark.django_db
def test_idn_recipient_goes_as_its_a_label_and_the_message_is_signed(no_utf8_server, settings):
    pem, public = generate_dkim_key(algorithm="ed25519")
    key = DkimKey(domain="skylark.test", selector="s1", algorithm="ed25519", public_key=public)
    key.set_private_key(pem)
    key.save()
    result = message_send_now(
        data=MESSAGE, from_email="news@skylark.test", to_email="anna@bücher.example", tag=7
    )
    assert (result.status, result.tag) == (SendStatus.SENT, 7)
    received = no_utf8_server.wait_for_messages(1)[0]
    assert received.rcpt_tos == ("anna@xn--bcher-kva.example",)
    assert received.mail_from == f"bounces@{settings.EDM_BOUNCE_DOMAIN}"
    record = dkim_txt_record(algorithm="ed25519", public_key_b64=public).encode()
    assert dkim.verify(received.data, dnsfunc=lambda name, timeout=5: record)


@pytest.mark.django_db
def test_an_unusable_address_is_a_permanent_result_and_nothing_is_sent(no_utf8_server):
    result = message_send_now(
        data=MESSAGE, from_email="news@skylark.test", to_email="a@b\r\nBcc: x@y.z", tag="t"
    )
    assert result.status == SendStatus.PERMANENT
    assert result.stage == "compose"
    assert no_utf8_server.messages == []
