"""Measure the classifier against a labelled corpus (used by bench/bounce_accuracy.py and tests)."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .kinds import BounceKind, BounceReason, BounceReport
from .parse import parse_bounce

CORPUS_ENV = "EDM_BOUNCE_CORPUS"

# Corpus reason names (Sisimai's) -> our vocabulary, for the informational reason figure.
CORPUS_REASONS: dict[str, frozenset[BounceReason]] = {
    "userunknown": frozenset({BounceReason.UNKNOWN_USER}),
    "hostunknown": frozenset({BounceReason.UNKNOWN_HOST}),
    "hasmoved": frozenset({BounceReason.MAILBOX_MOVED}),
    "notaccept": frozenset({BounceReason.DOMAIN_NOT_ACCEPTING}),
    "mailboxfull": frozenset({BounceReason.MAILBOX_FULL}),
    "mesgtoobig": frozenset({BounceReason.MESSAGE_TOO_LARGE}),
    "exceedlimit": frozenset({BounceReason.MESSAGE_TOO_LARGE}),
    "expired": frozenset({BounceReason.EXPIRED, BounceReason.DELAYED}),
    "blocked": frozenset({BounceReason.SPAM_BLOCK, BounceReason.POLICY_BLOCK}),
    "spamdetected": frozenset({BounceReason.SPAM_BLOCK}),
    "badreputation": frozenset({BounceReason.SPAM_BLOCK}),
    "requireptr": frozenset({BounceReason.SPAM_BLOCK}),
    "filtered": frozenset({BounceReason.FILTERED, BounceReason.POLICY_BLOCK}),
    "rejected": frozenset({BounceReason.POLICY_BLOCK}),
    "policyviolation": frozenset({BounceReason.POLICY_BLOCK}),
    "securityerror": frozenset({BounceReason.POLICY_BLOCK, BounceReason.AUTH_FAILURE}),
    "authfailure": frozenset({BounceReason.AUTH_FAILURE}),
    "toomanyconn": frozenset({BounceReason.RATE_LIMITED}),
    "speeding": frozenset({BounceReason.RATE_LIMITED}),
    "ratelimited": frozenset({BounceReason.RATE_LIMITED}),
    "norelaying": frozenset({BounceReason.RELAY_DENIED}),
    "networkerror": frozenset({BounceReason.NETWORK_ERROR}),
    "contenterror": frozenset({BounceReason.CONTENT_REJECTED}),
    "virusdetected": frozenset({BounceReason.CONTENT_REJECTED}),
    "notcompliantrfc": frozenset({BounceReason.CONTENT_REJECTED}),
    "syntaxerror": frozenset({BounceReason.CONTENT_REJECTED}),
    "systemerror": frozenset({BounceReason.SYSTEM_ERROR}),
    "systemfull": frozenset({BounceReason.SYSTEM_ERROR}),
    "mailererror": frozenset({BounceReason.SYSTEM_ERROR}),
    "suspend": frozenset({BounceReason.MAILBOX_SUSPENDED}),
    "onhold": frozenset({BounceReason.OTHER}),
    "undefined": frozenset({BounceReason.OTHER}),
    "feedback": frozenset({BounceReason.COMPLAINT}),
    "vacation": frozenset({BounceReason.AUTO_REPLY}),
    "delivered": frozenset({BounceReason.DELIVERED}),
}


def find_corpus(repo_root: Path) -> Path | None:
    """The corpus folder: $EDM_BOUNCE_CORPUS, else ../shared/corpus/bounces beside the repo."""
    override = os.environ.get(CORPUS_ENV)
    path = Path(override) if override else repo_root / ".." / "shared" / "corpus" / "bounces"
    path = path.resolve()
    return path if (path / "expectations.json").is_file() else None


def expected_kind(label_kind: str) -> BounceKind:
    """Map a corpus label kind onto ours (README: feedback -> complaint, vacation -> auto-reply)."""
    if label_kind in ("hard", "soft"):
        return BounceKind(label_kind)
    if label_kind == "not-a-bounce:feedback":
        return BounceKind.COMPLAINT
    if label_kind == "not-a-bounce:vacation":
        return BounceKind.AUTO_REPLY
    return BounceKind.NOT_BOUNCE


@dataclass
class Miss:
    """One label the classifier did not get right."""

    file: str
    expected_recipient: str | None
    found_recipients: tuple[str | None, ...]
    expected_kind: BounceKind
    found_kind: BounceKind
    expected_reason: str | None
    found_reason: str
    recipient_ok: bool


@dataclass
class Figures:
    """Accuracy and speed figures over a corpus."""

    messages: int = 0
    labels: int = 0
    recipients_found: int = 0
    kind_agreed: int = 0
    reason_agreed: int = 0
    reason_labels: int = 0
    auto_replies_as_bounces: int = 0
    seconds: float = 0.0
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    misses: list[Miss] = field(default_factory=list)

    @property
    def recipient_rate(self) -> float:
        return self.recipients_found / self.labels if self.labels else 0.0

    @property
    def kind_rate(self) -> float:
        return self.kind_agreed / self.labels if self.labels else 0.0

    @property
    def reason_rate(self) -> float:
        return self.reason_agreed / self.reason_labels if self.reason_labels else 0.0

    @property
    def messages_per_second(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


def evaluate(corpus: Path) -> Figures:
    """Parse every labelled message once and compare with its labels."""
    entries = json.loads((corpus / "expectations.json").read_text(encoding="utf-8"))
    raws = [(entry, (corpus / entry["file"]).read_bytes()) for entry in entries]
    figures = Figures(messages=len(raws))
    reports: list[BounceReport] = []
    started = time.perf_counter()
    for _, raw in raws:
        reports.append(parse_bounce(raw))
    figures.seconds = time.perf_counter() - started
    for (entry, _), report in zip(raws, reports, strict=True):
        by_address = {
            (r.recipient or "").lower() if r.recipient else None: r for r in report.recipients
        }
        for label in entry["labels"]:
            figures.labels += 1
            wanted = label["recipient"].lower() if label["recipient"] else None
            match = by_address.get(wanted)
            # A recipient we did not find is judged by the report's overall kind.
            got = match or (report.recipients[0] if report.recipients else None)
            got_kind = got.kind if got else BounceKind.NOT_BOUNCE
            got_reason = got.reason if got else BounceReason.NOT_BOUNCE
            want_kind = expected_kind(label["kind"])
            figures.recipients_found += match is not None
            figures.kind_agreed += got_kind == want_kind
            figures.confusion[(want_kind.value, got_kind.value)] += 1
            if want_kind == BounceKind.AUTO_REPLY and got_kind in (
                BounceKind.HARD,
                BounceKind.SOFT,
            ):
                figures.auto_replies_as_bounces += 1
            reason_ok = True
            if label["reason"] in CORPUS_REASONS:
                figures.reason_labels += 1
                reason_ok = got_reason in CORPUS_REASONS[label["reason"]]
                figures.reason_agreed += reason_ok
            if match is None or got_kind != want_kind or not reason_ok:
                figures.misses.append(
                    Miss(
                        file=entry["file"],
                        expected_recipient=label["recipient"],
                        found_recipients=tuple(r.recipient for r in report.recipients),
                        expected_kind=want_kind,
                        found_kind=got_kind,
                        expected_reason=label["reason"],
                        found_reason=got_reason.value,
                        recipient_ok=match is not None,
                    )
                )
    return figures
