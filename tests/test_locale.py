"""The zh-Hans catalogue: every entry translated, checked by msgfmt, and the committed .mo
compiled from the .po as it is (what `make run` serves without gettext tools)."""

from __future__ import annotations

import ast
import gettext
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from django.utils import translation

LOCALE = Path(__file__).resolve().parent.parent / "locale" / "zh_Hans" / "LC_MESSAGES"
_ENTRY = re.compile(
    r'^(msgctxt|msgid|msgid_plural|msgstr(?:\[\d+\])?) ((?:"(?:[^"\\]|\\.)*"\s*)+)', re.M
)


def _catalogue() -> list[dict[str, str]]:
    """The .po's entries: msgctxt, msgid, msgid_plural, msgstr and msgstr[n], strings joined."""
    entries: list[dict[str, str]] = []
    previous = ""
    for keyword, quoted in _ENTRY.findall((LOCALE / "django.po").read_text("utf-8")):
        value = "".join(ast.literal_eval(part) for part in re.findall(r'"(?:[^"\\]|\\.)*"', quoted))
        if keyword == "msgctxt" or (keyword == "msgid" and previous != "msgctxt"):
            entries.append({})
        entries[-1][keyword] = value
        previous = keyword
    return [entry for entry in entries if entry.get("msgid")]


def test_every_entry_is_translated_once():
    entries = _catalogue()
    assert entries
    ids = [(e.get("msgctxt"), e["msgid"], e.get("msgid_plural", "")) for e in entries]
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
        if "msgctxt" in entry:
            assert compiled.pgettext(entry["msgctxt"], entry["msgid"]) == entry["msgstr"]
        elif "msgid_plural" in entry:
            assert compiled.ngettext(entry["msgid"], entry["msgid_plural"], 1) == entry["msgstr[0]"]
        else:
            assert compiled.gettext(entry["msgid"]) == entry["msgstr"], entry["msgid"]


def test_django_serves_the_catalogue_in_chinese():
    entry = next(e for e in _catalogue() if "msgid_plural" not in e and "msgctxt" not in e)
    with translation.override("zh-hans"):
        assert translation.gettext(entry["msgid"]) == entry["msgstr"]
    with translation.override("en"):
        assert translation.gettext(entry["msgid"]) == entry["msgid"]


_SOURCES = ("api", "campaigns", "config", "contacts", "delivery", "mailkit", "templates")


def _fresh_catalogue(tmp_path: Path) -> Path:
    """The catalogue as `makemessages -l zh_Hans` leaves it, run on a copy of the sources and
    of the committed .po (the working tree is not touched)."""
    root = LOCALE.parent.parent.parent
    copy = tmp_path / "project"
    for name in _SOURCES:
        shutil.copytree(root / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(root / "locale", copy / "locale")
    shutil.copy(root / "manage.py", copy / "manage.py")
    result = subprocess.run(
        [sys.executable, "manage.py", "makemessages", "-l", "zh_Hans", "--no-wrap"],
        cwd=copy,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(copy)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return copy / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po"


def _po_entries(text: str) -> list[dict[str, str]]:
    """Entries of a .po with their flags; obsolete ones (#~) marked as such."""
    entries: list[dict[str, str]] = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip().splitlines()
        obsolete = bool(lines) and all(line.startswith("#~") for line in lines)
        lines = [line[2:].lstrip() if obsolete else line for line in lines]
        entry: dict[str, str] = {"flags": "", "obsolete": "yes" if obsolete else ""}
        keyword = ""
        for line in lines:
            if line.startswith("#,"):
                entry["flags"] += line[2:]
            elif line.startswith("#"):
                continue
            elif match := re.match(
                r'(msgid|msgid_plural|msgstr(?:\[\d+\])?|msgctxt) (".*")$', line
            ):
                keyword = match.group(1)
                entry[keyword] = ast.literal_eval(match.group(2))
            elif line.startswith('"') and keyword:
                entry[keyword] += ast.literal_eval(line)
        if entry.get("msgid"):
            entries.append(entry)
    return entries


@pytest.mark.skipif(
    not (shutil.which("xgettext") and shutil.which("msgmerge")),
    reason="GNU gettext (xgettext, msgmerge) is not installed: makemessages cannot run",
)
def test_every_marked_string_has_a_chinese_translation(tmp_path):
    """Every msgid that makemessages finds in the code and templates is translated and not
    fuzzy. Obsolete entries (#~, no longer in the code) are tolerated: they are reported as
    a warning, and `makemessages` drops nothing else."""
    entries = _po_entries(_fresh_catalogue(tmp_path).read_text("utf-8"))
    live = [e for e in entries if not e["obsolete"]]
    assert len(live) >= len(_catalogue()) // 2, "makemessages found too little: is it broken?"
    missing = [
        e["msgid"]
        for e in live
        if "fuzzy" in e["flags"] or not all(v for k, v in e.items() if k.startswith("msgstr"))
    ]
    assert not missing, (
        f"{len(missing)} marked strings have no zh-Hans translation (or a fuzzy one); add them "
        "to locale/zh_Hans/LC_MESSAGES/django.po and run `make messages`:\n"
        + "\n".join(f"  {m!r}" for m in missing)
    )
    obsolete = [e["msgid"] for e in entries if e["obsolete"]]
    if obsolete:
        warnings.warn(
            f"obsolete catalogue entries (no longer in the code): {obsolete}", stacklevel=1
        )
