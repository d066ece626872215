"""Hostile attachment names and types over the REST API, through to a real SMTP server."""

from __future__ import annotations

import base64
import json

import pytest

from api import services
from api.models import TransactionalMessage
from tests.api.conftest import auth
from tests.mail_readers import assert_received_safely

HOSTILE_NAMES = {
    "=?utf-8?b?Li4vLi4vZXZpbC5leGU=?=": "evil.exe",
    "=?utf-8?q?x=0D=0ABcc:_victim@example.org.txt?=": "x Bcc_ victim@example.org.txt",
    "invoice\u202egpj.exe": "invoicegpj.exe",
    "..\uff0f..\uff0fsecret.pdf": "secret.pdf",
    "filename*0*=utf-8''%2E%2E%2F; filename*1*=run.bat": "run.bat",
    "NUL.txt": "_NUL.txt",
    "报价单.pdf": "报价单.pdf",
}


def post(client, body, secret):
    return client.post(
        "/api/v1/messages", json.dumps(body), content_type="application/json", **auth(secret)
    )


def _body(attachments):
    return {"to": "ann@example.org", "subject": "Files", "text": "see", "attachments": attachments}


def _file(filename, content_type="application/octet-stream", content_id=""):
    item = {
        "filename": filename,
        "content_type": content_type,
        "content": base64.b64encode(b"MZ").decode(),
    }
    if content_id:
        item["content_id"] = content_id
    return item


@pytest.fixture
def smtp(smtp_server_factory, settings):
    server = smtp_server_factory(starttls=False)
    settings.EDM_SMTP_URL = server.url
    return server


def test_hostile_filenames_sent_through_the_api_reach_the_receiver_as_plain_names(
    client, api_key, smtp
):
    _, secret = api_key
    response = post(client, _body([_file(name) for name in HOSTILE_NAMES]), secret)
    assert response.status_code == 202, response.content
    message = TransactionalMessage.objects.get(public_id=response.json()["id"])
    assert services.message_send(message_id=message.pk) == "sent"
    [received] = smtp.wait_for_messages(1)
    views = assert_received_safely(received.data, len(HOSTILE_NAMES))
    for reader, names in views.items():
        if reader != "python-compat32":  # it leaves RFC 2231 percent-escapes as they are
            assert names == list(HOSTILE_NAMES.values()), reader


@pytest.mark.parametrize(
    "attachment",
    [
        _file("a.pdf", content_type="application/pdf\r\nBcc: victim@example.org"),
        _file("a.pdf", content_type="application/pdf\r\n"),
        _file("a.html", content_type="text/html; charset=utf-7"),
        _file("a.png", content_type="image/png", content_id="logo\r\nBcc: victim@example.org"),
        _file("a.png", content_type="image/png", content_id="logo@x; name=evil.exe"),
    ],
    ids=["type-crlf-header", "type-trailing-crlf", "type-parameter", "cid-crlf", "cid-param"],
)
def test_a_content_type_or_id_with_a_line_break_or_parameters_is_a_clear_422(
    client, api_key, attachment
):
    _, secret = api_key
    response = post(client, _body([attachment]), secret)
    assert response.status_code == 422
    assert response["Content-Type"].startswith("application/json")
    detail = response.json()["detail"]
    assert "Content-ID" in detail or "type/subtype" in detail
    assert not TransactionalMessage.objects.exists()
