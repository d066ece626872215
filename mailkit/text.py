"""Text from outside, cleaned of the characters the databases refuse (pure: no Django)."""

from __future__ import annotations

import re
from typing import Any

# PostgreSQL's text and jsonb refuse NUL (U+0000, and the \u0000 escape in jsonb). No UTF-8
# encoder (psycopg's, sqlite3's) takes a lone surrogate (U+D800-U+DFFF), which is what
# surrogateescape decoding makes of every invalid byte and what a JSON "\ud800" escape
# decodes to. Everything else PostgreSQL and SQLite store as given.
_REFUSED = re.compile("[\x00\ud800-\udfff]")

# Replaced, not removed: the reader sees that something was there (as with any decoder's
# "replace"), and an identifier never turns into another one ("vic\0tim@" is not "victim@").
REPLACEMENT = "\ufffd"


def clean_text(value: str) -> str:
    """``value`` with U+FFFD for each NUL and lone surrogate: storable everywhere."""
    if not has_refused(value):
        return value
    return _REFUSED.sub(REPLACEMENT, value)


def has_refused(value: str) -> bool:
    """Whether ``value`` holds a character that ``clean_text`` would change."""
    # C-speed checks first (a regex over a character range costs ~40 ns a character):
    # memchr for NUL, then the encoder, which refuses exactly the lone surrogates.
    if "\x00" in value:
        return True
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def refused_path(value: Any) -> str | None:
    """Where in a JSON-like value (dicts, lists, strings) a refused character is: a dotted
    path such as ``attributes.city`` or ``tags.2`` ("" for the value itself), or None.

    Iterative, so a deeply nested document cannot exhaust the stack; the path is built only
    for the hit (from links to the parents), so the walk stays linear in the document.
    """
    stack: list[tuple[Any, tuple[str, Any] | None]] = [(value, None)]
    while stack:
        item, link = stack.pop()
        if isinstance(item, str):
            if has_refused(item):
                return _path(link)
        elif isinstance(item, dict):
            for key, child in item.items():
                name = str(key)
                if has_refused(name):
                    return _path((name, link))
                stack.append((child, (name, link)))
        elif isinstance(item, list | tuple):
            for index, child in enumerate(item):
                stack.append((child, (str(index), link)))
    return None


def _path(link: tuple[str, Any] | None) -> str:
    names = []
    while link is not None:
        name, link = link
        names.append(clean_text(name))
    return ".".join(reversed(names))


def clean_json(value: Any) -> Any:
    """A JSON-like value with every string (keys included) passed through ``clean_text``.

    Returns ``value`` itself when nothing needs cleaning; iterative, like ``refused_path``.
    Two keys that differ only by what was removed collapse into one (the later wins).
    """
    if isinstance(value, str):
        return clean_text(value)
    if not isinstance(value, dict | list | tuple) or refused_path(value) is None:
        return value
    top = _empty_like(value)
    stack: list[tuple[Any, Any]] = [(value, top)]
    while stack:
        source, target = stack.pop()
        pairs = source.items() if isinstance(source, dict) else enumerate(source)
        for key, item in pairs:
            if isinstance(item, dict | list | tuple):
                child = _empty_like(item)
                stack.append((item, child))
            else:
                child = clean_text(item) if isinstance(item, str) else item
            if isinstance(target, dict):
                target[clean_text(key) if isinstance(key, str) else key] = child
            else:
                target[key] = child
    return top


def _empty_like(container: Any) -> Any:
    return {} if isinstance(container, dict) else [None] * len(container)
