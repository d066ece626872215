"""The bounce classifier's precedence rules and the leave-one-source-out measurement (pure)."""

from __future__ import annotations

from mailkit.bounces import BounceKind, BounceReason, parse_bounce
from mailkit.bounces.evaluate import Sample, leave_one_source_out, phrase_support
from mailkit.bounces.rules import Rulebook, rulebook_in_use, split_alternatives


def _notice(body: str, *, subject: str = "Undeliverable mail") -> bytes:
    return (
        "From: MAILER-DAEMON@gw.example.org\nTo: bounces+a-b@bounce.example.com\n"
        f"Subject: {subject}\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n"
        f"{body}\n"
    ).encode()


def _dsn(fields: str, *, text: str = "Your message could not be delivered.") -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example.org\nTo: bounces+a-b@bounce.example.com\n"
        "Subject: Undelivered Mail Returned to Sender\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        f"--B\nContent-Type: text/plain\n\n{text}\n\n"
        "--B\nContent-Type: message/delivery-status\n\n"
        f"Reporting-MTA: dns; mx.example.org\n\n{fields}\n--B--\n"
    ).encode()


def test_a_mailbox_servers_own_user_unknown_words_are_hard():
    # No remote reply quoted: the reporting system looked the address up itself.
    recipient = parse_bounce(_notice("Unknown user: kim@example.net\n")).recipients[0]
    assert recipient.recipient == "kim@example.net"
    assert (recipient.kind, recipient.reason) == (BounceKind.HARD, BounceReason.UNKNOWN_USER)


def test_a_relayed_reply_without_its_command_stays_filtered():
    raw = _notice("Delivery to kim@example.net failed.\nRemote host said: 550 unknown user\n")
    recipient = parse_bounce(raw).recipients[0]
    assert (recipient.kind, recipient.reason) == (BounceKind.SOFT, BounceReason.FILTERED)


def test_hedged_words_are_not_a_dead_address():
    raw = _notice(
        "The group you tried to contact (team@example.net) may not exist, or you may not "
        "have permission to post messages to the group."
    )
    recipient = parse_bounce(raw).recipients[0]
    assert recipient.kind == BounceKind.SOFT
    assert recipient.reason != BounceReason.UNKNOWN_USER


def test_recipient_filter_words_beat_an_address_status():
    raw = _dsn(
        "Final-Recipient: rfc822; kim@example.net\nAction: failed\nStatus: 5.1.1\n"
        "Diagnostic-Code: smtp; 550 5.1.1 Refused due to recipient preferences\n"
    )
    recipient = parse_bounce(raw).recipients[0]
    assert (recipient.kind, recipient.reason) == (BounceKind.SOFT, BounceReason.FILTERED)


def test_recipient_blocks_run_together_are_split():
    raw = _dsn(
        "Final-Recipient: rfc822; full@example.net\nAction: failed\nStatus: 5.2.2\n"
        "Diagnostic-Code: smtp; 550 5.2.2 Mailbox Full\n"
        "Final-Recipient: rfc822; gone@example.net\nAction: failed\nStatus: 5.1.1\n"
        "Diagnostic-Code: smtp; 550 5.1.1 User Unknown\n"
    )
    found = {r.recipient: (r.kind, r.reason) for r in parse_bounce(raw).recipients}
    assert found == {
        "full@example.net": (BounceKind.SOFT, BounceReason.MAILBOX_FULL),
        "gone@example.net": (BounceKind.HARD, BounceReason.UNKNOWN_USER),
    }


def test_a_failed_pipe_delivery_is_a_system_error_not_a_dead_address():
    raw = _dsn(
        "Final-Recipient: rfc822;|/usr/local/bin/handler kim@example.net\n"
        "Action: failed\nStatus: 5.0.0\n",
        text="pipe to |/usr/local/bin/handler\nFailed to read template: No such file or directory",
    )
    recipient = parse_bounce(raw).recipients[0]
    assert (recipient.kind, recipient.reason) == (BounceKind.SOFT, BounceReason.SYSTEM_ERROR)


def test_a_delivery_status_part_under_a_broken_boundary_is_still_read():
    raw = (
        b"From: MAILER-DAEMON@mx.example.org\nTo: bounces+a-b@bounce.example.com\n"
        b"Subject: Returned mail\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="OUTER"\n\n'
        b"--OUTER\nContent-Type: text/plain\n\n"
        b"----- The following addresses had permanent delivery errors -----\n\n"
        b"--INNER-NEVER-DECLARED\nContent-Type: message/delivery-status\n\n"
        b"Reporting-MTA: dns; mx.example.org\n\n"
        b"Final-Recipient: RFC822; gone@example.net\nAction: failed\nStatus: 5.1.1\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 User unknown\n\n--OUTER--\n"
    )
    recipients = parse_bounce(raw).recipients
    assert [(r.recipient, r.kind) for r in recipients] == [("gone@example.net", BounceKind.HARD)]


def test_split_alternatives_keeps_groups_and_classes_whole():
    assert split_alternatives(r"a|b(?:c|d)|[|x]|e\|f") == ("a", "b(?:c|d)", "[|x]", r"e\|f")


def test_a_rulebook_without_a_phrase_no_longer_uses_it():
    raw = _notice("kim@example.net: 550 5.0.0 mailbox unavailable, quota exceeded\n")
    assert parse_bounce(raw).recipients[0].reason == BounceReason.MAILBOX_FULL
    quota = {key for key in Rulebook().text_phrases() if "quota (?:exceeded" in key[1]}
    assert quota
    with rulebook_in_use(Rulebook(excluded=frozenset(quota))):
        assert parse_bounce(raw).recipients[0].reason != BounceReason.MAILBOX_FULL


def _sample(family: str, number: int, body: str, kind: str, reason: str) -> Sample:
    return Sample(
        file=f"{family}-{number}.eml",
        family=family,
        raw=_notice(body),
        labels=({"recipient": "kim@example.net", "kind": kind, "reason": reason},),
    )


def test_leave_one_source_out_leaves_out_a_phrase_only_one_family_uses():
    # "quota exceeded" is only in family "a": judged without it, a's message is misread,
    # while "mailbox is full", which two families use, still counts for both.
    samples = [
        _sample("a", 1, "kim@example.net: 550 5.0.0 quota exceeded", "soft", "mailboxfull"),
        _sample("b", 1, "kim@example.net: 550 5.0.0 mailbox is full", "soft", "mailboxfull"),
        _sample("c", 1, "kim@example.net: 552 5.0.0 mailbox is full", "soft", "mailboxfull"),
    ]
    support = phrase_support(samples)
    assert any(families == {"a"} for families in support.values())
    assert any(families == {"b", "c"} for families in support.values())
    figures = {f.family: f for f in leave_one_source_out(samples).families}
    assert figures["a"].left_out
    assert [m.found_reason for m in figures["a"].figures.misses] != []
    assert figures["b"].figures.misses == [] and figures["c"].figures.misses == []
