"""Attachment filenames as receivers read them: three independent MIME parsers, one verdict."""

from __future__ import annotations

import email.policy
import unicodedata
from email.header import decode_header, make_header
from email.parser import BytesParser

from fast_mail_parser import parse_email

# What a receiver may treat as a directory separator, after NFKC as some clients apply it.
_SEPARATORS = frozenset("/\\\u2044\u2215\u2216\u29f8\u29f9\uff0f\uff3c\ufe68")
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL"} | {f"{d}{n}" for d in ("COM", "LPT") for n in "0123456789"}  # fmt: skip
_PART_HEADERS = {"content-type", "content-transfer-encoding", "content-disposition", "content-id"}


def _compat32_decoded(name: str | None) -> str | None:
    # What mail-parser and many scripts do: compat32, then RFC 2047 words decoded by hand.
    if name is None:
        return None
    return str(make_header(decode_header(name)))


def received_filenames(raw: bytes) -> dict[str, list[str | None]]:
    """The attachment names each reader gets, in the order of the parts."""
    modern = BytesParser(policy=email.policy.default).parsebytes(raw)
    legacy = BytesParser(policy=email.policy.compat32).parsebytes(raw)
    legacy_parts = [p for p in legacy.walk() if p.get("Content-Disposition")]
    return {
        "python-default": [p.get_filename() for p in modern.walk() if p["Content-Disposition"]],
        "python-compat32": [p.get_filename() for p in legacy_parts],
        "compat32+decode_header": [_compat32_decoded(p.get_filename()) for p in legacy_parts],
        "fast-mail-parser (Rust mailparse)": [a.filename for a in parse_email(raw).attachments],
    }


def unsafe_reasons(name: str | None) -> list[str]:
    """Why a receiver could be misled by this name; empty when it is only a name."""
    if not name:
        return ["no name"]
    reasons = []
    normalized = unicodedata.normalize("NFKC", name)
    if _SEPARATORS & (set(name) | set(normalized)):
        reasons.append("path separator")
    for char in name:
        category = unicodedata.category(char)
        if category in {"Cc", "Cf", "Cs", "Zl", "Zp"}:
            reasons.append(f"invisible or control character U+{ord(char):04X} ({category})")
    if name.startswith("."):
        reasons.append("leading dot")
    if name.endswith((".", " ")):
        reasons.append("trailing dot or space")
    if name.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        reasons.append("Windows device name")
    if "=?" in name or ":" in name:
        reasons.append("left for another decoder (=? or :)")
    if len(name.encode("utf-8")) > 255:
        reasons.append("longer than 255 bytes")
    return reasons


def assert_received_safely(raw: bytes, count: int) -> dict[str, list[str | None]]:
    """Every reader sees `count` attachments with harmless names and no injected header."""
    views = received_filenames(raw)
    for reader, names in views.items():
        assert len(names) == count, (reader, names)
        for name in names:
            assert not unsafe_reasons(name), (reader, name, unsafe_reasons(name))
    message = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert message["Bcc"] is None and message["Cc"] is None
    for part in message.walk():
        if part["Content-Disposition"]:
            assert {key.lower() for key in part.keys()} <= _PART_HEADERS, part.keys()
    return views
