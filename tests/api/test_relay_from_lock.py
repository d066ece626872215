"""The relay's From-domain lock against every header syntax a receiver may read (issue 14, 9).

A real SMTP client submits to the real relay, whose accepted messages are sent on (Celery
eager) to a recording aiosmtpd server: a refused message must get a 5xx, be stored nowhere and
never reach that server. Each attack is followed by an allowed message that must arrive, so
"nothing arrived" cannot pass because nothing works.
"""

from __future__ import annotations

import json
import smtplib
import ssl

import pytest

from api import relay_glue, services
from api.models import Scope, TransactionalMessage
from api.relay import relay_start
from mailkit.headerblock import originators_read
from tests.api.conftest import auth

GOOD = b"From: App <app@good.example>\r\n"
TAIL = b"To: a@example.com\r\nSubject: Hi\r\n\r\nHello\r\n"

ATTACKS = {
    # the issue's own: Python's parser skipped the line, receivers read it as From
    "space-before-colon": b"From : x@evil.example\r\n",
    "tab-before-colon": b"From\t: x@evil.example\r\n",
    "space-before-colon-after-good": GOOD + b"From : x@evil.example\r\n",
    "sender-space-before-colon": GOOD + b"Sender : x@evil.example\r\n",
    "upper-case-name": b"FROM: x@evil.example\r\n",
    "two-from-headers": GOOD + b"from: x@evil.example\r\n",
    "two-mailboxes": b"From: app@good.example, x@evil.example\r\n",
    "quoted-at-in-display-name": b'From: "app@good.example" <x@evil.example>\r\n',
    "bare-at-in-display-name": b"From: app@good.example <x@evil.example>\r\n",
    "good-address-in-comment": b"From: x@evil.example (app@good.example)\r\n",
    "escaped-quote-in-display-name": b'From: "a\\"@good.example" <x@evil.example>\r\n',
    "quoted-local-part-with-at": b'From: "app@good.example"@evil.example\r\n',
    "group-syntax": b"From: Team: app@good.example, x@evil.example;\r\n",
    "empty-group": b"From: undisclosed-senders:;\r\n",
    "source-route": b"From: <@good.example:x@evil.example>\r\n",
    "sender": GOOD + b"Sender: x@evil.example\r\n",
    "resent-from": GOOD + b"Resent-From: x@evil.example\r\n",
    "resent-sender": GOOD + b"Resent-Sender: x@evil.example\r\n",
    "resent-from-odd-case": GOOD + b"rEsEnT-fRoM: x@evil.example\r\n",
    "encoded-word-whole-address": b"From: =?utf-8?q?x=40evil.example?=\r\n",
    "encoded-word-in-local-part": b"From: =?utf-8?q?app?=@evil.example\r\n",
    "folded-address": b"From: App\r\n <x@evil.example>\r\n",
    "folded-empty-first-line": b"From:\r\n x@evil.example\r\n",
    "nul-byte": b"From: app@good.example\x00x@evil.example\r\n",
    "nul-in-another-header": GOOD + b"X-Note: a\x00\r\nFrom: x@evil.example\r\n",
    "invalid-utf8": b"From: app@good.example\xff\r\n",
    "line-without-colon": b"X-Note\r\nFrom: x@evil.example\r\n",
    "empty-field-name": b": x\r\nFrom: x@evil.example\r\n",
    "bare-lf": GOOD + b"X-Note: a\nFrom: x@evil.example\r\n",
    "bare-lf-blank-line": GOOD + b"X-Note: a\r\n\nFrom: x@evil.example\r\n",
    "bare-cr": GOOD + b"X-Note: a\rFrom: x@evil.example\r\n",
    "indented-first-line": b" X-Note: a\r\nFrom: x@evil.example\r\n",
    "white-space-only-line": b"X-Note: a\r\n \r\nFrom: x@evil.example\r\n",
    # 999 characters: the longest line SMTP lets through, one over RFC 5322's 998
    "overlong-line": b"X-Note: " + b"a" * 991 + b"\r\nFrom: x@evil.example\r\n",
    "vertical-tab": b"X-Note: a\x0bFrom: x@evil.example\r\n",
    "unicode-line-separator": "From: app@good.example\u2028x@evil.example\r\n".encode(),
    "fullwidth-dot-domain": "From: x@evil\uff0eexample\r\n".encode(),
    "domain-literal": b"From: x@[192.0.2.1]\r\n",
    # bidi override: the address displays as "elpmaxe.doog@evil.example"
    "rtlo-in-local-part": "From: \u202eelpmaxe.live@good.example\r\n".encode(),
    "rtlo-in-display-name": 'From: "\u202eelpmaxe.live" <app@good.example>\r\n'.encode(),
    "zero-width-in-address": "From: app\u200b@good.example\r\n".encode(),
    "soft-hyphen-in-domain": "From: app@good.ex\u00adample\r\n".encode(),
    # Mailsploit: readers that decode before parsing see another address, a cut or a new line
    "encoded-nul-in-display-name": (
        b"From: =?utf-8?b?eEBldmlsLmV4YW1wbGUA?= <app@good.example>\r\n"
    ),
    "encoded-address-in-display-name": (
        b"From: =?utf-8?q?x=40evil.example_=3Cx=40evil.example=3E?= <app@good.example>\r\n"
    ),
    "encoded-crlf-in-display-name": (
        b"From: =?utf-8?q?a=0D=0AFrom=3A_x=40evil.example?= <app@good.example>\r\n"
    ),
    "encoded-word-in-quoted-display-name": (
        b'From: "=?utf-8?q?x=40evil.example=00?=" <app@good.example>\r\n'
    ),
    "encoded-bidi-in-display-name": b"From: =?utf-8?b?4oCu?= <app@good.example>\r\n",
}


@pytest.fixture
def downstream(smtp_server, settings, celery_eager):
    """Accepted messages are sent on at once to this recording server."""
    settings.EDM_SMTP_URL = smtp_server.url
    settings.EDM_SMTP_TLS_CA_FILE = smtp_server.ca_file
    return smtp_server


@pytest.fixture
def relay(smtp_tls_files):
    controller = relay_start(
        authenticate=relay_glue.authenticate,
        accept=relay_glue.accept,
        host="127.0.0.1",
        port=0,
        cert_file=smtp_tls_files.cert_file,
        key_file=smtp_tls_files.key_file,
    )
    yield controller
    controller.stop()


@pytest.fixture
def secret(transactional_db, redis_client):
    _, secret = services.api_key_create(
        application="app", scopes=[Scope.MESSAGES_SEND], allowed_from_domains=["good.example"]
    )
    return secret


def submit(relay, smtp_tls_files, secret: str, data: bytes, mail_from: str = "app@good.example"):
    """(code, text) of the reply to DATA, from a real smtplib client (bytes go as written)."""
    tls = ssl.create_default_context(cafile=smtp_tls_files.ca_file)
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
        client.starttls(context=tls)
        client.login("app", secret)
        client.mail(mail_from)
        client.rcpt("a@example.com")
        return client.data(data)


def test_an_allowed_from_is_relayed_downstream_with_our_envelope(
    relay, secret, smtp_tls_files, downstream
):
    code, _ = submit(relay, smtp_tls_files, secret, GOOD + TAIL, mail_from="x@elsewhere.test")
    assert code == 250
    [received] = downstream.wait_for_messages(1)
    assert b"From: App <app@good.example>" in received.data
    # The client's MAIL FROM never travels: the envelope sender is Skylark's return path,
    # which is why only the From/Sender headers carry an identity to lock.
    assert received.mail_from != "x@elsewhere.test"
    assert "elsewhere.test" not in received.mail_from


@pytest.mark.parametrize("header", list(ATTACKS.values()), ids=list(ATTACKS))
def test_every_originator_syntax_is_checked_or_refused(
    relay, secret, smtp_tls_files, downstream, header
):
    code, text = submit(relay, smtp_tls_files, secret, header + TAIL)
    assert code == 550, text
    assert text.startswith((b"5.7.1 ", b"5.6.0 ")), text
    assert b"may not send from" in text or b"Message refused: " in text
    assert not TransactionalMessage.objects.exists()
    # The control: an allowed message goes through, and it is the only one that arrived.
    assert submit(relay, smtp_tls_files, secret, GOOD + TAIL)[0] == 250
    received = downstream.wait_for_messages(1)
    assert len(received) == 1 and b"evil" not in received[0].data


def test_the_refusal_says_what_is_wrong(relay, secret, smtp_tls_files, downstream):
    code, text = submit(relay, smtp_tls_files, secret, ATTACKS["space-before-colon"] + TAIL)
    assert (code, text) == (
        550,
        b"5.6.0 Message refused: a header field name is followed by white space before its colon",
    )
    code, text = submit(relay, smtp_tls_files, secret, ATTACKS["sender"] + TAIL)
    assert code == 550 and b"5.7.1" in text and b"x@evil.example" in text


@pytest.mark.parametrize(
    "header",
    [
        b"From: App (the shop) <app@good.example>\r\n",
        b'From: "Shop, Inc." <app@good.example>\r\n',
        b"From: =?utf-8?q?Caf=C3=A9?= <app@good.example>\r\n",
        b"From: app . orders @ good . example\r\n",  # obs-local-part and obs-domain
        b"From: App\r\n\t<app@good.example>\r\n",  # folded, then checked
        b"From: app@good.example\r\nSender: bot@good.example\r\n",
        "From: Zoë <zoë@good.example>\r\n".encode(),  # RFC 6532 UTF-8
        b"From: =?utf-8?q?M=C3=BCller=2C_Hans?= <app@good.example>\r\n",  # decoded comma
        "From: \u0645\u0647\u200c\u0633\u0627 <app@good.example>\r\n".encode(),  # ZWNJ
    ],
    ids=[
        "comment",
        "quoted-comma",
        "encoded-display-name",
        "obs-dots",
        "folded",
        "sender",
        "utf8",
        "encoded-comma",
        "persian-zwnj-display-name",
    ],
)
def test_legitimate_syntax_still_passes(relay, secret, smtp_tls_files, downstream, header):
    code, text = submit(relay, smtp_tls_files, secret, header + TAIL)
    assert code == 250, text
    downstream.wait_for_messages(1)


@pytest.mark.parametrize("written", ["straße.example", "ｓtrasse.example", "strasse\u3002example"])
def test_a_domain_that_idna_maps_to_an_allowed_one_is_refused(
    relay, smtp_tls_files, downstream, transactional_db, redis_client, written
):
    """IDNA 2003 (Python's codec) maps "straße" to "strasse"; IDNA 2008 receivers read their
    own A-label, a domain someone else may own: the lock must not compare the mapped form."""
    _, secret = services.api_key_create(
        application="app", scopes=[Scope.MESSAGES_SEND], allowed_from_domains=["strasse.example"]
    )
    header = f"From: app@{written}\r\n".encode()
    code, text = submit(relay, smtp_tls_files, secret, header + TAIL)
    assert code == 550 and b"IDNA" in text, text
    assert not TransactionalMessage.objects.exists()
    assert submit(relay, smtp_tls_files, secret, b"From: app@strasse.example\r\n" + TAIL)[0] == 250
    [received] = downstream.wait_for_messages(1)
    assert b"From: app@strasse.example" in received.data


def test_headers_only_message_without_a_body_is_read_strictly(relay, secret, smtp_tls_files):
    assert submit(relay, smtp_tls_files, secret, GOOD + b"Subject: Hi\r\n")[0] == 250
    code, _ = submit(relay, smtp_tls_files, secret, b"Subject: Hi\r\nFrom : x@evil.example\r\n")
    assert code == 550


def test_a_huge_header_block_is_refused_quickly(relay, secret, smtp_tls_files):
    import time

    header = b"".join(b"X-N: " + b"a" * 900 + b"\r\n" for _ in range(2000))  # 1.8 MB
    started = time.perf_counter()
    code, text = submit(relay, smtp_tls_files, secret, GOOD + header + TAIL)
    assert code == 550 and b"too large" in text
    assert time.perf_counter() - started < 10


# -- the REST API: its From and the headers it lets callers set ------------------------------


@pytest.fixture
def rest_secret(db, redis_client):
    _, secret = services.api_key_create(
        application="shop", scopes=[Scope.MESSAGES_SEND], allowed_from_domains=["good.example"]
    )
    return secret


def post(client, secret: str, **fields):
    body = {"to": "ann@example.com", "subject": "Hi", "text": "Hello", **fields}
    return client.post(
        "/api/v1/messages", json.dumps(body), content_type="application/json", **auth(secret)
    )


@pytest.mark.parametrize(
    "from_email",
    [
        "x@evil.example",
        '"app@good.example"@evil.example',
        "app@good.example <x@evil.example>",
        "x@evil.example,app@good.example",
        "x@evil.example (app@good.example)",
        "app@good.example\r\nFrom: x@evil.example",
        "x@evil.example\x00@good.example",
    ],
)
def test_rest_from_email_cannot_leave_the_lock(client, rest_secret, from_email):
    response = post(client, rest_secret, from_email=from_email)
    assert 400 <= response.status_code < 500, response.content
    assert response["Content-Type"].startswith("application/json")
    assert not TransactionalMessage.objects.exists()


@pytest.mark.parametrize(
    "name",
    ["From", "from", "SENDER", "Resent-From", "resent-sender", "From ", "From:", "Reply-To"],
)
def test_rest_headers_cannot_set_an_originator(client, rest_secret, name):
    response = post(
        client, rest_secret, from_email="app@good.example", headers={name: "x@evil.example"}
    )
    assert 400 <= response.status_code < 500, response.content
    assert not TransactionalMessage.objects.exists()


@pytest.mark.parametrize(
    "value", ["a\r\nFrom: x@evil.example", "a\nSender: x@evil.example", "a\rFrom : x@evil.example"]
)
def test_rest_header_value_cannot_smuggle_a_from(client, rest_secret, value):
    response = post(
        client,
        rest_secret,
        from_email="app@good.example",
        from_name="x@evil.example <x@evil.example>",
        headers={"X-Note": value},
    )
    # Accepted or refused, the message as stored reads, strictly, as from good.example only.
    if response.status_code == 202:
        raw = bytes(TransactionalMessage.objects.get().raw)
        assert originators_read(raw).all == ("app@good.example",)
    else:
        assert 400 <= response.status_code < 500, response.content
        assert not TransactionalMessage.objects.exists()
