"""`manage.py classify_bounce`: one JSON object per recipient, and a readable table."""

from __future__ import annotations

import io
import json

from django.core.management import call_command

DSN = (
    "From: MAILER-DAEMON@mx.example.org\r\n"
    "To: bounces+abc@bounces.skylark.test\r\n"
    "Subject: Undelivered Mail Returned to Sender\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
    "--B\r\nContent-Type: text/plain\r\n\r\nThe mail system could not deliver your message.\r\n"
    "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
    "Reporting-MTA: dns; mx.example.org\r\n\r\n"
    "Final-Recipient: rfc822; gone@example.org\r\n"
    "Action: failed\r\nStatus: 5.1.1\r\n"
    "Diagnostic-Code: smtp; 550 5.1.1 <gone@example.org>: Recipient address rejected\r\n\r\n"
    "Final-Recipient: rfc822; full@example.org\r\n"
    "Action: failed\r\nStatus: 4.2.2\r\n"
    "Diagnostic-Code: smtp; 452 4.2.2 Mailbox full\r\n"
    "--B--\r\n"
)

AUTO_REPLY = (
    "From: someone@example.org\r\nTo: news@skylark.test\r\nSubject: Out of office\r\n"
    "Auto-Submitted: auto-replied\r\n\r\nI am away until Monday.\r\n"
)


def test_json_lines_give_one_object_per_recipient(tmp_path):
    dsn = tmp_path / "dsn.eml"
    dsn.write_bytes(DSN.encode())
    out = io.StringIO()
    call_command("classify_bounce", str(dsn), "--json", stdout=out)
    rows = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    by_recipient = {row["recipient"]: row for row in rows}
    assert set(by_recipient) == {"gone@example.org", "full@example.org"}
    gone = by_recipient["gone@example.org"]
    assert (gone["kind"], gone["reason"], gone["status"], gone["reply_code"]) == (
        "hard",
        "unknown_user",
        "5.1.1",
        550,
    )
    assert gone["file"] == str(dsn)
    assert "Recipient address rejected" in gone["diagnostic"]
    full = by_recipient["full@example.org"]
    assert (full["kind"], full["reason"]) == ("soft", "mailbox_full")


def test_an_auto_reply_is_never_a_bounce_and_the_table_is_readable(tmp_path):
    reply = tmp_path / "ooo.eml"
    reply.write_bytes(AUTO_REPLY.encode())
    out = io.StringIO()
    call_command("classify_bounce", str(reply), "--json", stdout=out)
    rows = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    assert rows and all(row["kind"] == "auto-reply" for row in rows)
    table = io.StringIO()
    call_command("classify_bounce", str(reply), stdout=table)
    assert "auto-reply" in table.getvalue()
