"""SmtpPool against the real scripted SMTP server (tests/smtp_server.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from mailkit.errors import SmtpConfigError
from mailkit.smtp import (
    Envelope,
    Security,
    SendResult,
    SendStatus,
    SmtpConfig,
    SmtpPool,
    parse_enhanced_code,
    smtp_config_from_url,
)

pytestmark = pytest.mark.timeout(30)

BODY = b"From: news@example.com\r\nTo: ann@example.org\r\nSubject: Hello\r\n\r\nHi Ann\r\n"


def config_for(server, **overrides) -> SmtpConfig:
    options = {"ca_file": server.ca_file, "timeout": 3.0, "local_hostname": "skylark.test"}
    options.update(overrides)
    return smtp_config_from_url(server.url, **options)


def envelope(
    recipient: str = "ann@example.org", data: bytes = BODY, tag: int = 1, **kwargs
) -> Envelope:
    return Envelope(
        sender="bounces+1@example.com", recipients=(recipient,), data=data, tag=tag, **kwargs
    )


def send_all(config: SmtpConfig, envelopes: Sequence[Envelope]) -> list[SendResult]:
    async def main() -> list[SendResult]:
        pool = SmtpPool(config)
        try:
            return list(await asyncio.gather(*(pool.send(e) for e in envelopes)))
        finally:
            await pool.close()

    return asyncio.run(main())


def send_one(config: SmtpConfig, env: Envelope | None = None) -> SendResult:
    return send_all(config, [env or envelope()])[0]


# --- TLS and AUTH ---


def test_starttls_and_auth_deliver_with_the_explicit_envelope(smtp_server):
    result = send_one(config_for(smtp_server))

    assert result.status is SendStatus.SENT
    assert (result.code, result.stage, result.enhanced) == (250, "data", "2.0.0")
    (message,) = smtp_server.wait_for_messages(1)
    assert message.mail_from == "bounces+1@example.com"
    assert message.rcpt_tos == ("ann@example.org",)
    assert message.auth_user == "skylark"
    assert message.tls is True
    assert smtp_server.commands("STARTTLS")


def test_implicit_tls_delivers(smtp_server_factory):
    server = smtp_server_factory(implicit_tls=True, users={"skylark": "secret"})
    assert server.url.endswith("security=tls")

    result = send_one(config_for(server))

    assert result.status is SendStatus.SENT
    (message,) = server.wait_for_messages(1)
    assert message.tls is True
    assert message.auth_user == "skylark"


def test_wrong_ca_is_a_temporary_tls_failure_and_no_auth_is_sent(smtp_server, smtp_tls_files):
    result = send_one(config_for(smtp_server, ca_file=smtp_tls_files.other_ca_file))

    assert result.status is SendStatus.TEMPORARY
    assert result.stage == "tls"
    assert "certificate" in result.text.lower()
    assert smtp_server.commands("AUTH") == []
    assert smtp_server.messages == []


def test_wrong_ca_with_implicit_tls_is_a_tls_failure(smtp_server_factory, smtp_tls_files):
    server = smtp_server_factory(implicit_tls=True, users={"skylark": "secret"})

    result = send_one(config_for(server, ca_file=smtp_tls_files.other_ca_file))

    assert (result.status, result.stage) == (SendStatus.TEMPORARY, "tls")
    assert server.commands("AUTH") == []


def test_refuses_to_authenticate_when_starttls_is_not_offered(smtp_server_factory):
    # The server would even accept AUTH in the clear: the client must not try.
    server = smtp_server_factory(
        starttls=False, users={"skylark": "secret"}, auth_require_tls=False
    )

    result = send_one(config_for(server, security=Security.STARTTLS))

    assert result.status is SendStatus.TEMPORARY
    assert result.stage == "tls"
    assert result.text == ("server does not offer STARTTLS; refusing to authenticate in the clear")
    assert server.commands("AUTH") == []
    assert server.commands("MAIL") == []


def test_wrong_password_is_reported_at_auth_stage(smtp_server):
    result = send_one(config_for(smtp_server, password="wrong"))

    assert result.stage == "auth"
    assert result.code == 535
    # A credentials problem is not the recipient's fault: never a bounce.
    assert result.status is SendStatus.TEMPORARY
    assert smtp_server.messages == []


def test_security_none_with_username_is_a_config_error():
    with pytest.raises(SmtpConfigError):
        SmtpConfig(host="mx.example.com", security=Security.NONE, username="u", password="p")


def test_plain_server_without_credentials_delivers(smtp_server_factory):
    server = smtp_server_factory(starttls=False)

    result = send_one(config_for(server))

    assert result.status is SendStatus.SENT
    assert server.wait_for_messages(1)[0].tls is False


# --- scripted replies ---


def test_421_at_connect_is_temporary(smtp_server):
    smtp_server.script("connect", "421 4.3.2 Service not available")

    result = send_one(config_for(smtp_server))

    assert (result.status, result.stage, result.code) == (SendStatus.TEMPORARY, "connect", 421)
    assert result.enhanced == "4.3.2"


@pytest.mark.parametrize(
    ("stage", "reply", "status"),
    [
        ("mail", "451 4.3.0 Try again later", SendStatus.TEMPORARY),
        ("mail", "553 5.7.1 Sender rejected", SendStatus.PERMANENT),
        ("rcpt", "450 4.2.0 Mailbox busy", SendStatus.TEMPORARY),
        ("rcpt", "550 5.1.1 No such user", SendStatus.PERMANENT),
        ("data", "452 4.3.1 Insufficient storage", SendStatus.TEMPORARY),
        ("data", "554 5.7.1 Message rejected as spam", SendStatus.PERMANENT),
    ],
)
def test_refusals_map_to_status_stage_and_enhanced_code(smtp_server, stage, reply, status):
    smtp_server.script(stage, reply, times=1)

    first, second = send_all(config_for(smtp_server, pool_size=1), [envelope(), envelope()])

    assert first.status is status
    assert first.stage == stage
    assert first.code == int(reply[:3])
    assert first.enhanced == reply.split()[1]
    assert first.text == reply[4:]
    # The connection was RSET and reused for the next message.
    assert second.status is SendStatus.SENT
    assert len(smtp_server.connections) == 1
    assert smtp_server.commands("RSET")


def test_partial_refusal_is_sent_with_refused_recipients(smtp_server):
    smtp_server.script("rcpt", "550 5.1.1 No such user", recipient="gone@example.org")
    env = Envelope(
        sender="bounces@example.com",
        recipients=("ann@example.org", "gone@example.org"),
        data=BODY,
    )

    result = send_one(config_for(smtp_server), env)

    assert result.status is SendStatus.SENT
    assert result.refused == (("gone@example.org", 550, "5.1.1 No such user"),)
    assert smtp_server.wait_for_messages(1)[0].rcpt_tos == ("ann@example.org",)


def test_deferral_then_acceptance_over_time(smtp_server):
    smtp_server.script("rcpt", "450 4.2.0 Mailbox busy", recipient="ann@example.org", times=2)
    config = config_for(smtp_server, pool_size=1)

    statuses = [r.status for r in send_all(config, [envelope()] * 3)]

    assert statuses == [SendStatus.TEMPORARY, SendStatus.TEMPORARY, SendStatus.SENT]


def test_421_mid_session_discards_the_connection(smtp_server):
    smtp_server.script("mail", "421 4.7.0 Too many messages, closing", times=1)
    config = config_for(smtp_server, pool_size=1)

    first, second = send_all(config, [envelope(), envelope()])

    assert (first.status, first.stage, first.code) == (SendStatus.TEMPORARY, "mail", 421)
    assert second.status is SendStatus.SENT
    assert len(smtp_server.connections) == 2


def test_drop_during_data_is_temporary_dropped(smtp_server):
    smtp_server.script("data", drop_after_bytes=100, times=1)
    data = BODY + (b"x" * 70 + b"\r\n") * 100

    first, second = send_all(config_for(smtp_server, pool_size=1), [envelope(data=data)] * 2)

    assert (first.status, first.stage) == (SendStatus.TEMPORARY, "dropped")
    assert second.status is SendStatus.SENT  # on a fresh connection
    assert len(smtp_server.wait_for_messages(1)) == 1
    assert len(smtp_server.connections) == 2


def test_drop_after_final_dot_is_temporary_dropped(smtp_server):
    smtp_server.script("data", drop=True, times=1)

    result = send_one(config_for(smtp_server))

    assert (result.status, result.stage) == (SendStatus.TEMPORARY, "dropped")
    assert smtp_server.messages == []


def test_stalled_server_times_out(smtp_server):
    smtp_server.script("rcpt", "250 OK", stall=3.0, times=1)
    config = config_for(smtp_server, timeout=0.5, pool_size=1)

    started = time.monotonic()
    first, second = send_all(config, [envelope(), envelope()])

    assert (first.status, first.stage) == (SendStatus.TEMPORARY, "timeout")
    assert time.monotonic() - started < 3.0
    assert second.status is SendStatus.SENT
    assert len(smtp_server.connections) == 2  # the timed-out connection was discarded


def test_stalled_greeting_times_out(smtp_server):
    smtp_server.script("connect", stall=3.0, times=1)

    result = send_one(config_for(smtp_server, timeout=0.5))

    assert (result.status, result.stage) == (SendStatus.TEMPORARY, "timeout")


# --- extensions ---


def test_message_larger_than_size_is_permanent_and_nothing_is_sent(smtp_server_factory):
    server = smtp_server_factory(users={"skylark": "secret"}, size=1000)

    result = send_one(config_for(server), envelope(data=BODY + b"x" * 2000 + b"\r\n"))

    assert (result.status, result.stage) == (SendStatus.PERMANENT, "size")
    assert "1000" in result.text
    assert server.commands("MAIL") == []
    assert server.commands("DATA") == []


def test_size_is_declared_in_mail_from(smtp_server):
    send_one(config_for(smtp_server))

    assert f"SIZE={len(BODY)}" in smtp_server.wait_for_messages(1)[0].mail_options


def test_smtputf8_required_but_not_offered_is_permanent(smtp_server_factory):
    server = smtp_server_factory(users={"skylark": "secret"}, smtputf8=False)

    result = send_one(config_for(server), envelope(recipient="josé@example.org"))

    assert result.status is SendStatus.PERMANENT
    assert "SMTPUTF8" in result.text
    assert server.commands("MAIL") == []


def test_smtputf8_address_is_sent_when_offered(smtp_server):
    result = send_one(config_for(smtp_server), envelope(recipient="josé@example.org"))

    assert result.status is SendStatus.SENT
    message = smtp_server.wait_for_messages(1)[0]
    assert message.rcpt_tos == ("josé@example.org",)
    assert "SMTPUTF8" in message.mail_options


def test_8bit_data_declares_8bitmime(smtp_server):
    data = "Subject: Café\r\n\r\nDéjà vu\r\n".encode()

    send_one(config_for(smtp_server), envelope(data=data))

    message = smtp_server.wait_for_messages(1)[0]
    assert "BODY=8BITMIME" in message.mail_options
    assert message.data == data


def test_dsn_parameters_only_when_offered(smtp_server_factory):
    with_dsn = smtp_server_factory(users={"skylark": "secret"})
    without_dsn = smtp_server_factory(users={"skylark": "secret"}, dsn=False)
    env = envelope(dsn_notify="FAILURE,DELAY", dsn_ret="HDRS", dsn_envid="d42")

    assert send_one(config_for(with_dsn), env).status is SendStatus.SENT
    assert send_one(config_for(without_dsn), env).status is SendStatus.SENT

    message = with_dsn.wait_for_messages(1)[0]
    assert "RET=HDRS" in message.mail_options
    assert "ENVID=D42" in message.mail_options  # aiosmtpd upper-cases parameters
    assert message.rcpt_options == ("NOTIFY=FAILURE,DELAY",)
    plain = without_dsn.wait_for_messages(1)[0]
    assert not any(o.startswith(("RET=", "ENVID=")) for o in plain.mail_options)
    assert plain.rcpt_options == ()


@pytest.mark.parametrize("options", [{"starttls": False}, {"implicit_tls": True}])
def test_first_message_without_auth_still_gets_the_ehlo_options(smtp_server_factory, options):
    """No STARTTLS and no AUTH to greet first: the pool sends EHLO itself before choosing
    the first message's MAIL options (SIZE, DSN, SMTPUTF8), not only from the second on."""
    server = smtp_server_factory(**options)
    env = envelope(recipient="josé@example.org", dsn_ret="HDRS", dsn_envid="d42")

    result = send_one(config_for(server), env)

    assert result.status is SendStatus.SENT, result.text
    message = server.wait_for_messages(1)[0]
    assert {f"SIZE={len(BODY)}", "SMTPUTF8", "RET=HDRS", "ENVID=D42"} <= set(message.mail_options)
    assert server.commands("EHLO") == ["EHLO"]  # one greeting


def test_exact_bytes_arrive_including_a_lone_dot_line(smtp_server):
    data = b"Subject: dots\r\n\r\nbefore\r\n.\r\n..two\r\n.leading\r\nafter\r\n"

    send_one(config_for(smtp_server), envelope(data=data))

    assert smtp_server.wait_for_messages(1)[0].data == data


# --- pooling ---


def test_connections_are_reused_up_to_pool_size(smtp_server):
    config = config_for(smtp_server, pool_size=3)

    results = send_all(config, [envelope(f"r{i}@example.org") for i in range(30)])

    assert all(r.status is SendStatus.SENT for r in results)
    assert len(smtp_server.wait_for_messages(30)) == 30
    sessions = smtp_server.connections
    assert 1 <= len(sessions) <= 3
    assert sum(s.messages for s in sessions) == 30
    assert len(smtp_server.commands("AUTH")) == len(sessions)


def test_connection_is_retired_after_max_messages(smtp_server):
    config = config_for(smtp_server, pool_size=1, max_messages_per_connection=2)

    results = send_all(config, [envelope()] * 5)

    assert all(r.status is SendStatus.SENT for r in results)
    assert [s.messages for s in smtp_server.connections] == [2, 2, 1]
    smtp_server.wait_for(lambda: len(smtp_server.commands("QUIT")) >= 3)


def test_connection_is_retired_after_max_age(smtp_server):
    config = config_for(smtp_server, pool_size=1, max_connection_age=0.0)

    send_all(config, [envelope()] * 2)

    assert [s.messages for s in smtp_server.connections] == [1, 1]


def test_idle_connection_is_checked_with_noop(smtp_server):
    config = config_for(smtp_server, pool_size=1, idle_noop_after=0.0)

    async def main() -> list[SendResult]:
        pool = SmtpPool(config)
        try:
            return [await pool.send(envelope()), await pool.send(envelope())]
        finally:
            await pool.close()

    results = asyncio.run(main())

    assert all(r.status is SendStatus.SENT for r in results)
    assert len(smtp_server.connections) == 1
    assert smtp_server.commands("NOOP") == ["NOOP"]


def test_dead_idle_connection_is_replaced_transparently(smtp_server):
    # The server drops the connection at the idle NOOP: the message goes out on a new one.
    smtp_server.script("noop", drop=True, times=1)
    config = config_for(smtp_server, pool_size=1, idle_noop_after=0.0)

    async def main() -> list[SendResult]:
        pool = SmtpPool(config)
        try:
            return [await pool.send(envelope()), await pool.send(envelope())]
        finally:
            await pool.close()

    results = asyncio.run(main())

    assert [r.status for r in results] == [SendStatus.SENT, SendStatus.SENT]
    assert len(smtp_server.connections) == 2


def test_connection_dead_at_mail_is_retried_once_on_a_fresh_one(smtp_server):
    # Idle check disabled: the stale connection is only found out at MAIL FROM.
    config = config_for(smtp_server, pool_size=1, idle_noop_after=3600)

    async def main() -> list[SendResult]:
        pool = SmtpPool(config)
        try:
            first = await pool.send(envelope())
            smtp_server.script("mail", drop=True, times=1)  # now the reused one dies
            return [first, await pool.send(envelope())]
        finally:
            await pool.close()

    results = asyncio.run(main())

    assert [r.status for r in results] == [SendStatus.SENT, SendStatus.SENT]
    assert len(smtp_server.wait_for_messages(2)) == 2
    assert len(smtp_server.connections) == 2


def test_close_quits_idle_connections(smtp_server):
    send_all(config_for(smtp_server, pool_size=2), [envelope()] * 4)

    smtp_server.wait_for(lambda: len(smtp_server.commands("QUIT")) == len(smtp_server.connections))


# --- config parsing ---


def test_smtp_config_from_url_decodes_credentials_and_options():
    config = smtp_config_from_url(
        "smtp://us%40er:p%3Ass%2Fw@mail.example.com:2525?security=starttls&pool_size=8&timeout=5"
    )

    assert config.host == "mail.example.com"
    assert config.port == 2525
    assert config.security is Security.STARTTLS
    assert (config.username, config.password) == ("us@er", "p:ss/w")
    assert (config.pool_size, config.timeout) == (8, 5.0)
    assert "p:ss/w" not in repr(config)


@pytest.mark.parametrize(
    ("url", "security", "port"),
    [
        ("smtp://mx.example.com?security=none", Security.NONE, 25),
        ("smtp://u:p@mx.example.com", Security.STARTTLS, 587),
        ("smtp://u:p@mx.example.com?security=starttls", Security.STARTTLS, 587),
        ("smtp://u:p@mx.example.com?security=tls", Security.TLS, 465),
        ("smtps://u:p@mx.example.com", Security.TLS, 465),
        ("smtps://u:p@mx.example.com:1465", Security.TLS, 1465),
    ],
)
def test_smtp_config_from_url_default_ports(url, security, port):
    config = smtp_config_from_url(url)

    assert (config.security, config.port) == (security, port)


def test_smtp_config_from_url_overrides_win():
    config = smtp_config_from_url("smtp://mx.example.com:25?security=none", port=2626, timeout=1)

    assert (config.port, config.timeout) == (2626, 1)


@pytest.mark.parametrize(
    "url",
    [
        "http://mx.example.com",
        "smtp://mx.example.com?security=ssl",
        "smtp://u:p@mx.example.com?security=none",
        "smtp://mx.example.com?colour=blue",
        "smtp://?security=none",
    ],
)
def test_smtp_config_from_url_rejects_bad_urls(url):
    with pytest.raises(SmtpConfigError):
        smtp_config_from_url(url)


@pytest.mark.parametrize(
    ("text", "enhanced"),
    [("5.1.1 No such user", "5.1.1"), ("4.7.0 Try later", "4.7.0"), ("OK", ""), ("", "")],
)
def test_parse_enhanced_code(text, enhanced):
    assert parse_enhanced_code(text) == enhanced


# --- the acceptance hook (the journal's place) ---


def test_an_accepted_message_is_handed_to_the_hook_before_its_connection_sends_again(
    smtp_server,
):
    """One connection, two messages: while the hook of the first waits, the server has
    received nothing of the second (no MAIL), so a journal written there is on record
    before the connection carries anything else. A refusal is not handed over."""
    smtp_server.script("rcpt", "550 5.1.1 No such user", recipient="gone@example.org")
    seen: list[tuple[object, int, int]] = []

    async def main() -> list[SendResult]:
        pool = SmtpPool(config_for(smtp_server, pool_size=1))

        async def hook(result: SendResult) -> None:
            await asyncio.sleep(0.3)  # a slow journal write
            seen.append((result.tag, len(smtp_server.messages), len(smtp_server.commands("MAIL"))))

        try:
            sends = [
                pool.send(envelope("ann@example.org", tag=1), on_accepted=hook),
                pool.send(envelope("gone@example.org", tag=2), on_accepted=hook),
                pool.send(envelope("bob@example.org", tag=3), on_accepted=hook),
            ]
            return list(await asyncio.gather(*sends))
        finally:
            await pool.close()

    results = asyncio.run(main())
    assert [r.status for r in results] == [SendStatus.SENT, SendStatus.PERMANENT, SendStatus.SENT]
    # At each hook: only the messages up to this one accepted, and no MAIL of the next one.
    assert seen == [(1, 1, 1), (3, 2, 3)]
