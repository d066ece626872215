"""The variables a template can use for the chosen lists, and how the editors insert them."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from django.utils.translation import gettext as _

from contacts.selectors import contact_attribute_keys

# Names the context always has (campaigns.sending.prepare.PreparedCampaign.recipient_context).
_FIELDS = ("first_name", "name", "email")
_LINKS = ("unsubscribe_url", "webview_url")


@dataclass(frozen=True)
class Variable:
    name: str
    label: str
    kind: str  # "field", "attribute" or "link"
    insert: str  # what the editor inserts (with an empty fallback to fill in)


def variable_insertion(*, name: str, fallback: str = "") -> str:
    """``{{ name | default("fallback") }}``; a link or an empty fallback: ``{{ name }}``."""
    if not name.isidentifier():
        raise ValueError(name)
    if not fallback:
        return "{{ " + name + " }}"
    # A JSON string is a valid Jinja string literal (same escapes), quotes and braces included.
    return "{{ " + name + " | default(" + json.dumps(fallback, ensure_ascii=False) + ") }}"


def template_variables_offered(*, list_ids: Iterable[int]) -> list[Variable]:
    """Contact fields, then the attributes the lists' contacts have, then the message's links."""
    labels = {
        "first_name": _("First name"),
        "name": _("Name"),
        "email": _("Email address"),
        "unsubscribe_url": _("Unsubscribe link"),
        "webview_url": _("View in browser link"),
    }
    offered = [Variable(n, labels[n], "field", variable_insertion(name=n)) for n in _FIELDS]
    offered += [
        Variable(key, key, "attribute", variable_insertion(name=key))
        for key in contact_attribute_keys(list_ids=list_ids)
        if key not in _FIELDS and key not in _LINKS
    ]
    offered += [Variable(n, labels[n], "link", variable_insertion(name=n)) for n in _LINKS]
    return offered


def variables_as_json(variables: list[Variable]) -> list[dict]:
    return [asdict(variable) for variable in variables]
