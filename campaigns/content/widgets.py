"""The HTML editor's widget: a textarea with the variables of the chosen lists beside it."""

from __future__ import annotations

from django.urls import reverse_lazy
from unfold.widgets import UnfoldAdminTextareaWidget


class HtmlEditorWidget(UnfoldAdminTextareaWidget):
    """Lists the fields and attributes of the lists chosen on the form (or picked in the
    panel) and inserts ``{{ variable | default("fallback") }}`` at the cursor."""

    template_name = "campaigns/content/html_editor.html"

    class Media:
        js = ("campaigns/content/variables.js",)
        css = {"all": ("campaigns/content/editor.css",)}

    def __init__(self, attrs: dict | None = None) -> None:
        super().__init__(attrs={"rows": "20", "spellcheck": "false", **(attrs or {})})

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        context["variables_url"] = reverse_lazy("content_variables")
        return context
