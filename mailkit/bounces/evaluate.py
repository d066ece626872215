"""Measure the classifier against a labelled corpus (used by bench/bounce_accuracy.py and tests)."""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .kinds import BounceKind, BounceReason, BounceReport
from .parse import parse_bounce
from .rules import PhraseKey, Rulebook, phrases, rulebook_in_use

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


@dataclass(frozen=True)
class Sample:
    """One labelled message of a corpus, with the source family it comes from."""

    file: str
    family: str
    raw: bytes
    labels: tuple[dict[str, Any], ...]


# Corpus file prefixes that are one vendor's servers under several names: a phrase seen only
# in their files is that vendor's, and is left out together when the vendor is left out.
FAMILY_GROUPS: dict[str, str] = {
    "lhost-gmail": "google",
    "lhost-googlegroups": "google",
    "lhost-googleworkspace": "google",
    "rhost-google": "google",
    "rhost-gsuite": "google",
    "lhost-outlook": "microsoft",
    "rhost-outlook": "microsoft",
    "rhost-microsoft": "microsoft",
    "lhost-office365": "microsoft",
    "lhost-exchange2003": "microsoft",
    "lhost-exchange2007": "microsoft",
    "lhost-amazonses": "amazon",
    "lhost-receivingses": "amazon",
    "lhost-amazonworkmail": "amazon",
    "lhost-yahoo": "yahoo",
    "rhost-yahooinc": "yahoo",
    "lhost-sendmail": "sendmail",
    "lhost-v5sendmail": "sendmail",
    "lhost-kddi": "kddi",
    "lhost-ezweb": "kddi",
    "rhost-kddi": "kddi",
    "lhost-notes": "ibm-notes",
    "lhost-domino": "ibm-notes",
}


def source_family(file: str, declared: str = "") -> str:
    """The reporting MTA or provider family of a corpus file (its name without the number)."""
    if declared:
        return declared
    base = re.sub(r"-\d+$", "", Path(file).stem)
    if base.startswith("not-"):
        return "not-a-bounce"
    return FAMILY_GROUPS.get(base, base.split("-", 1)[-1])


def load_corpus(corpus: Path) -> list[Sample]:
    """Every labelled message of a corpus folder (expectations.json and its files)."""
    entries = json.loads((corpus / "expectations.json").read_text(encoding="utf-8"))
    return [
        Sample(
            file=entry["file"],
            family=source_family(entry["file"], entry.get("family", "")),
            raw=(corpus / entry["file"]).read_bytes(),
            labels=tuple(entry["labels"]),
        )
        for entry in entries
    ]


def evaluate(corpus: Path | Sequence[Sample]) -> Figures:
    """Parse every labelled message once and compare with its labels."""
    samples = load_corpus(corpus) if isinstance(corpus, Path) else list(corpus)
    started = time.perf_counter()
    reports = [parse_bounce(sample.raw) for sample in samples]
    seconds = time.perf_counter() - started
    figures = score(samples, reports)
    figures.seconds = seconds
    return figures


def score(samples: Sequence[Sample], reports: Sequence[BounceReport]) -> Figures:
    """Compare each sample's report with its labels."""
    figures = Figures(messages=len(samples))
    for sample, report in zip(samples, reports, strict=True):
        by_address = {
            (r.recipient or "").lower() if r.recipient else None: r for r in report.recipients
        }
        for label in sample.labels:
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
                        file=sample.file,
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


@dataclass
class FamilyFigures:
    """One source family's figures with the phrases only its files contain left out."""

    family: str
    figures: Figures
    left_out: tuple[PhraseKey, ...]


@dataclass
class SourceFigures:
    """Leave-one-source-out: every family judged by rules not fitted to its own files."""

    families: list[FamilyFigures]

    @property
    def labels(self) -> int:
        return sum(f.figures.labels for f in self.families)

    @property
    def kind_rate(self) -> float:
        agreed = sum(f.figures.kind_agreed for f in self.families)
        return agreed / self.labels if self.labels else 0.0

    @property
    def recipient_rate(self) -> float:
        found = sum(f.figures.recipients_found for f in self.families)
        return found / self.labels if self.labels else 0.0

    @property
    def auto_replies_as_bounces(self) -> int:
        return sum(f.figures.auto_replies_as_bounces for f in self.families)

    def worst(self, count: int = 5) -> list[FamilyFigures]:
        """The families with the lowest kind agreement (the largest first among equals)."""
        ranked = sorted(self.families, key=lambda f: (f.figures.kind_rate, -f.figures.labels))
        return ranked[:count]


def phrase_support(samples: Sequence[Sample]) -> dict[PhraseKey, frozenset[str]]:
    """For each phrase of the rules, the families whose messages' texts contain it.

    The texts are those the classifier itself looked at while classifying each message
    (decoded, lowercased), recorded by a rulebook.
    """
    recorder = Rulebook()
    texts: list[str] = []
    with rulebook_in_use(recorder):
        for sample in samples:
            recorder.seen = []
            parse_bounce(sample.raw)
            texts.append("\n".join(dict.fromkeys(recorder.seen)))
    support: dict[PhraseKey, frozenset[str]] = {}
    for key, pattern in phrases():
        support[key] = frozenset(
            sample.family
            for sample, text in zip(samples, texts, strict=True)
            if pattern.search(text)
        )
    return support


def leave_one_source_out(corpus: Path | Sequence[Sample]) -> SourceFigures:
    """Judge each family's messages with every phrase found only in that family's files left
    out: what rules written from other servers' words and from RFC 3463 make of a server
    they were not written with in view."""
    samples = load_corpus(corpus) if isinstance(corpus, Path) else list(corpus)
    support = phrase_support(samples)
    families: list[FamilyFigures] = []
    for family in sorted({sample.family for sample in samples}):
        own = [sample for sample in samples if sample.family == family]
        left_out = tuple(sorted(key for key, seen in support.items() if seen == {family}))
        with rulebook_in_use(Rulebook(excluded=frozenset(left_out))):
            reports = [parse_bounce(sample.raw) for sample in own]
        families.append(FamilyFigures(family, score(own, reports), left_out))
    return SourceFigures(families)
