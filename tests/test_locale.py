"""The zh-Hans catalogue: every entry translated, checked by msgfmt, and the committed .mo
compiled from the .po as it is (what `make run` serves without gettext tools)."""

from __future__ import annotations

import ast
import gettext
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from django.utils import translation

LOCALE = Path(__file__).resolve().parent.parent / "locale" / "zh_Hans" / "LC_MESSAGES"
_ENTRY = re.compile(r'^(msgid|msgid_plural|msgstr(?:\[\d+\])?) ((?:"(?:[^"\\]|\\.)*"\s*)+)', re.M)


def _catalogue() -> list[dict[str, str]]:
    """The .po's entries: msgid, msgid_plural, msgstr and msgstr[n], strings joined."""
    entries: list[dict[str, str]] = []
    for keyword, quoted in _ENTRY.findall((LOCALE / "django.po").read_text("utf-8")):
        value = "".join(ast.literal_eval(part) for part in re.findall(r'"(?:[^"\\]|\\.)*"', quoted))
        if keyword == "msgid":
            entries.append({})
        entries[-1][keyword] = value
    return [entry for entry in entries if entry.get("msgid")]


def test_every_entry_is_translated_once():
    entries = _catalogue()
    assert entries
    ids = [(e["msgid"], e.get("msgid_plural", "")) for e in entries]
    assert len(ids) == len(set(ids)), "a msgid appears twice"
    for entry in entries:
        translations = [v for k, v in entry.items() if k.startswith("msgstr")]
        assert translations and all(translations), f"untranslated: {entry['msgid']!r}"


@pytest.mark.skipif(not shutil.which("msgfmt"), reason="GNU gettext's msgfmt is not installed")
def test_msgfmt_accepts_the_catalogue(tmp_path):
    result = subprocess.run(
        ["msgfmt", "--check", "-o", str(tmp_path / "x.mo"), str(LOCALE / "django.po")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_the_committed_mo_is_compiled_from_the_po():
    with (LOCALE / "django.mo").open("rb") as handle:
        compiled = gettext.GNUTranslations(handle)
    for entry in _catalogue():
        if "msgid_plural" in entry:
            assert compiled.ngettext(entry["msgid"], entry["msgid_plural"], 1) == entry["msgstr[0]"]
        else:
            assert compiled.gettext(entry["msgid"]) == entry["msgstr"], entry["msgid"]


def test_django_serves_the_catalogue_in_chinese():
    entry = next(e for e in _catalogue() if "msgid_plural" not in e)
    with translation.override("zh-hans"):
        assert translation.gettext(entry["msgid"]) == entry["msgstr"]
    with translation.override("en"):
        assert translation.gettext(entry["msgid"]) == entry["msgid"]
