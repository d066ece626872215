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
    if _REFUSED.search(value) is None:
        return value
    return _REFUSED.sub(REPLACEMENT, value)


def has_refused(value: str) -> bool:
    """Whether ``value`` holds a character that ``clean_text`` would change."""
    return _REFUSED.search(value) is not None


def refused_path(value: Any) -> str | None:
    """Where in a JSON-like value (dicts, lists, strings) a refused character is: a dotted
    path such as ``attributes.city`` or ``tags.2`` ("" for the value itself), or None.

    Iterative, so a deeply nested document cannot exhaust the stack.
    """
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if has_refused(item):
                return path
        elif isinstance(item, dict):
            for key, child in item.items():
                name = str(key)
                child_path = f"{path}.{clean_text(name)}" if path else clean_text(name)
                if has_refused(name):
                    return child_path
                stack.append((child, child_path))
        elif isinstance(item, list | tuple):
            for index, child in enumerate(item):
                stack.append((child, f"{path}.{index}" if path else str(index)))
    return None


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
