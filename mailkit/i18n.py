"""Translation hook: mailkit marks its user-facing messages; the application translates them.

mailkit imports no Django, so its messages are marked with this module's `gettext` (which
`makemessages` finds like Django's own) and translated by whatever the application installs
(`install`, called from contacts.apps.ContactsConfig.ready with Django's gettext). Until then
they stay in English, the source language.
"""

from __future__ import annotations

from collections.abc import Callable

_translate: Callable[[str], str] = str


def gettext(message: str) -> str:
    """`message` in the active language of the installed translator (English without one)."""
    return _translate(message)


def install(translate: Callable[[str], str]) -> None:
    """Use `translate` (e.g. django.utils.translation.gettext) for mailkit's messages."""
    global _translate
    _translate = translate
