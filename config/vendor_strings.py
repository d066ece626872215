"""Words of the admin theme (django-unfold) that ship without a Chinese catalogue.

django-unfold has no zh-Hans translation of its own words; listing them here keeps them in
the project's catalogue when `makemessages` runs (gettext_noop marks without translating)."""

from __future__ import annotations

from django.utils.translation import gettext_noop

UNFOLD_WORDS = (
    gettext_noop("Type to search"),
    gettext_noop("Search apps and models..."),
    gettext_noop("Light"),
    gettext_noop("Dark"),
    gettext_noop("System"),
    gettext_noop("All applications"),
    gettext_noop("Go back"),
    gettext_noop("Select record"),
    gettext_noop("Run"),
    gettext_noop("Run the selected action"),
    gettext_noop("Select action"),
    gettext_noop("Select action to run"),
    gettext_noop("Filters"),
    gettext_noop("Choose file to upload"),
    gettext_noop("Select value"),
    gettext_noop("This item will be deleted."),
    gettext_noop("Click to cancel"),
    gettext_noop("Loading more results..."),
    gettext_noop("Select all rows"),
    gettext_noop("Date"),
    gettext_noop("Time"),
)

# Django's own words that its zh-Hans catalogue does not translate (yet).
DJANGO_WORDS = (
    gettext_noop("After you've created a user, you’ll be able to edit more user options."),
)
