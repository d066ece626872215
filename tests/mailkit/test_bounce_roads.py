"""One classifier for every road: an SMTP reply means the same during the send and in a DSN."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mailkit.bounces import BounceKind, BounceReason, classify_smtp_reply, parse_bounce
from mailkit.outcomes import RetryPolicy, outcome_for_result
from mailkit.smtp import SendResult, SendStatus

REPLIES = [
    (550, "5.1.1", "<kim@example.net>: Recipient address rejected: User unknown", "RCPT"),
    (550, "5.7.1", "Message rejected due to local policy", "DATA"),
    (550, "5.7.1", "User unknown", "RCPT"),
    (550, "5.7.1", "User unknown", "DATA"),
    (554, "5.7.1", "Service unavailable; client host blocked using zen.spamhaus.org", "RCPT"),
    (552, "5.2.2", "Mailbox full", "RCPT"),
    (550, "5.2.1", "The email account that you tried to reach is disabled", "RCPT"),
    (550, "5.1.2", "Host unknown", "RCPT"),
    (550, "5.7.26", "Unauthenticated email from example.org is not accepted due to DMARC", "DATA"),
    (550, "5.1.1", "Refused due to recipient preferences", "RCPT"),
    (553, "5.1.8", "Sender address rejected: Domain not found", "MAIL"),
    (452, "4.2.2", "Mailbox over quota", "RCPT"),
    (421, "4.7.0", "Too many connections from your IP, try again later", "RCPT"),
    (550, "", "No such user here", "RCPT"),
    (550, "", "User unknown", "DATA"),
]


# How Postfix names the command a reply answered (RFC 5321 verbs).
POSTFIX_COMMANDS = {"RCPT": "RCPT TO", "MAIL": "MAIL FROM", "DATA": "end of DATA"}


def _dsn(code: int, status: str, text: str, command: str) -> bytes:
    reply = f"{code} {status} {text}".replace("  ", " ")
    command = POSTFIX_COMMANDS[command]
    return (
        "From: MAILER-DAEMON@mx.example.org\nTo: bounces+a-b@bounce.example.com\n"
        "Subject: Undelivered Mail Returned to Sender\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        "--B\nContent-Type: text/plain\n\nYour message could not be delivered.\n\n"
        "--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.org\n\n"
        "Final-Recipient: rfc822; kim@example.net\n"
        f"Action: {'delayed' if code < 500 else 'failed'}\nStatus: {status or f'{code // 100}.0.0'}\n"
        f"Diagnostic-Code: smtp; {reply} (in reply to {command} command)\n--B--\n"
    ).encode()


@pytest.mark.parametrize(("code", "status", "text", "command"), REPLIES)
def test_a_reply_is_classified_alike_during_smtp_and_in_a_dsn(code, status, text, command):
    synchronous = classify_smtp_reply(code=code, enhanced=status, text=text, command=command)
    recipient = parse_bounce(_dsn(code, status, text, command)).recipients[0]
    if code < 500:
        # A DSN with Action: delayed is still trying; the synchronous 4xx is deferred.
        assert synchronous[0] == BounceKind.SOFT and recipient.kind == BounceKind.SOFT
        return
    assert (recipient.kind, recipient.reason) == synchronous


def _result(stage: str, code: int, enhanced: str, text: str) -> SendResult:
    return SendResult(
        tag=1,
        status=SendStatus.PERMANENT,
        code=code,
        enhanced=enhanced,
        text=f"{enhanced} {text}",
        stage=stage,
    )


def _outcome(result: SendResult):
    now = datetime(2025, 1, 1, tzinfo=UTC)
    return outcome_for_result(
        result, delivery_id=1, attempts=1, first_attempt_at=now, now=now, policy=RetryPolicy()
    )


def test_the_senders_stage_tells_a_dead_address_from_a_filter():
    at_rcpt = _outcome(_result("rcpt", 550, "5.7.1", "User unknown"))
    after_data = _outcome(_result("data", 550, "5.7.1", "User unknown"))
    assert (at_rcpt.status, at_rcpt.reason, at_rcpt.suppress) == ("bounced", "unknown_user", True)
    assert (after_data.status, after_data.reason, after_data.suppress) == (
        "failed",
        BounceReason.FILTERED.value,
        False,
    )


def test_a_refused_sender_is_never_a_dead_recipient():
    outcome = _outcome(_result("mail", 550, "5.1.1", "Sender address unknown"))
    assert (outcome.status, outcome.suppress) == ("failed", False)
