"""Forms for the contacts admin: the import wizard."""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from django import forms
from django.core.exceptions import ValidationError
from django.db import models
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from unfold.widgets import (
    UnfoldAdminFileFieldWidget,
    UnfoldAdminSelectWidget,
    UnfoldAdminTextInputWidget,
    UnfoldBooleanSwitchWidget,
)

from contacts.imports.csvparse import CORE_TARGETS, attribute_key
from contacts.models import ContactList, ImportMode
from mailkit.text import clean_text, refused_path

ENCODING_CHOICES = [
    ("auto", gettext_lazy("Detect automatically")),
    ("utf-8", "UTF-8"),
    ("utf-16", gettext_lazy("UTF-16 (with BOM)")),
    ("gb18030", gettext_lazy("GB18030 / GBK / GB2312 (Simplified Chinese)")),
    ("big5", gettext_lazy("Big5 (Traditional Chinese)")),
    ("shift_jis", gettext_lazy("Shift_JIS (Japanese)")),
    ("cp1252", "Windows-1252 / Latin-1"),
]
ALLOWED_EXTENSIONS = (".csv", ".tsv", ".txt", ".xlsx")
MODE_HELP = gettext_lazy(
    "Add new contacts only: existing contacts are left as they are. "
    "Add new and update existing: a name and attributes in the file replace the stored ones "
    "(other attributes are kept). "
    "Unsubscribe from the list: the addresses in the file are unsubscribed from the list. "
    "Add to the suppression list: the addresses are never mailed again (no list needed)."
)

# What a column can become. Anything else posted for a column is taken as an attribute name
# (what the form accepted before it had a menu, and what scripts may still post).
ATTRIBUTE = "attribute"
COLUMN_CHOICES = [
    ("email", gettext_lazy("Email address")),
    ("name", gettext_lazy("Name")),
    ("first_name", gettext_lazy("First name")),
    ("last_name", gettext_lazy("Last name")),
    (ATTRIBUTE, gettext_lazy("Attribute (custom field)")),
    ("skip", gettext_lazy("Do not import")),
]


class ImportUploadForm(forms.Form):
    file = forms.FileField(
        label=gettext_lazy("File"),
        help_text=gettext_lazy(
            "CSV, TSV or XLSX (first sheet); the first row holds the column names."
        ),
        widget=UnfoldAdminFileFieldWidget(attrs={"accept": ",".join(ALLOWED_EXTENSIONS)}),
    )
    contact_list = forms.ModelChoiceField(
        queryset=ContactList.objects.all(),
        required=False,
        label=gettext_lazy("Contact list"),
        empty_label=gettext_lazy("(choose a list, or name a new one below)"),
        help_text=gettext_lazy("The list to import into."),
        widget=UnfoldAdminSelectWidget,
    )
    new_list_name = forms.CharField(
        max_length=200,
        required=False,
        label=gettext_lazy("New list name"),
        help_text=gettext_lazy("Or create a new list with this name."),
        widget=UnfoldAdminTextInputWidget,
    )
    mode = forms.ChoiceField(
        choices=ImportMode.choices,
        initial=ImportMode.UPSERT,
        label=gettext_lazy("Mode"),
        help_text=MODE_HELP,
        widget=UnfoldAdminSelectWidget,
    )
    encoding = forms.ChoiceField(
        choices=ENCODING_CHOICES,
        initial="auto",
        label=gettext_lazy("Encoding"),
        help_text=gettext_lazy("Leave on automatic unless the preview shows garbled text."),
        widget=UnfoldAdminSelectWidget,
    )
    other_encoding = forms.CharField(
        max_length=40,
        required=False,
        label=gettext_lazy("Other encoding"),
        help_text=gettext_lazy("Any other codec name, e.g. koi8_r (overrides the choice)."),
        widget=UnfoldAdminTextInputWidget,
    )
    reject_role = forms.BooleanField(
        required=False,
        label=gettext_lazy("Reject role addresses (info@, admin@, noreply@ ...)"),
        widget=UnfoldBooleanSwitchWidget,
    )
    reject_disposable = forms.BooleanField(
        required=False,
        label=gettext_lazy("Reject disposable domains"),
        widget=UnfoldBooleanSwitchWidget,
    )

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.name.lower().endswith(".xls"):
            raise forms.ValidationError(
                _(
                    "Old Excel .xls files cannot be read: open the file in Excel and save it as "
                    "Excel Workbook (.xlsx) or CSV UTF-8, then upload that."
                )
            )
        if not upload.name.lower().endswith(ALLOWED_EXTENSIONS):
            raise forms.ValidationError(_("Upload a .csv, .tsv, .txt or .xlsx file."))
        return upload

    def clean_other_encoding(self) -> str:
        name = self.cleaned_data["other_encoding"].strip()
        if name:
            try:
                codecs.lookup(name)
            except LookupError:
                raise forms.ValidationError(
                    _("Unknown encoding %(name)s.") % {"name": repr(name)}
                ) from None
        return name

    def clean(self):
        cleaned = super().clean()
        mode = cleaned.get("mode")
        has_list = cleaned.get("contact_list") or (cleaned.get("new_list_name") or "").strip()
        if mode != ImportMode.SUPPRESS and not has_list:
            raise forms.ValidationError(_("Choose a list or name a new one."))
        return cleaned

    @property
    def chosen_encoding(self) -> str:
        return self.cleaned_data.get("other_encoding") or self.cleaned_data["encoding"]


@dataclass(frozen=True)
class MappingColumn:
    """One file column on the preview page: its header, examples and its two fields."""

    index: int
    header: str
    examples: tuple[str, ...]
    target: forms.BoundField
    attribute: forms.BoundField


class ImportMappingForm(forms.Form):
    """Per column: what it becomes (``col_N``) and, for an attribute, its name (``col_N_attr``).

    ``col_N`` may also be posted as a target directly: email, name, first_name, last_name,
    skip or an attribute name.
    """

    encoding = forms.CharField(
        max_length=40,
        label=gettext_lazy("Encoding"),
        help_text=gettext_lazy(
            "Pick another encoding and re-read if the preview shows garbled text."
        ),
    )

    def __init__(
        self,
        *args,
        headers: tuple[str, ...],
        mapping: dict[str, str],
        examples: list[tuple[str, ...]] | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.headers = headers
        self.examples = examples or [() for _ in headers]
        encoding = str(self.initial.get("encoding") or "auto")
        known = [value for value, _ in ENCODING_CHOICES]
        self.fields["encoding"].widget = UnfoldAdminSelectWidget(
            choices=ENCODING_CHOICES + ([] if encoding in known else [(encoding, encoding)])
        )
        for index, header in enumerate(headers):
            target = mapping.get(header, "skip")
            is_core = target in CORE_TARGETS
            self.fields[f"col_{index}"] = forms.CharField(
                label=header or _("(column %(number)s)") % {"number": index + 1},
                initial=target if is_core else ATTRIBUTE,
                max_length=100,
                widget=UnfoldAdminSelectWidget(
                    choices=COLUMN_CHOICES, attrs={"data-column": index}
                ),
            )
            self.fields[f"col_{index}_attr"] = forms.CharField(
                label=_("Attribute name for %(column)s")
                % {"column": header or _("column %(number)s") % {"number": index + 1}},
                initial=attribute_key(target if not is_core else header or "column"),
                max_length=100,
                required=False,
                widget=UnfoldAdminTextInputWidget(attrs={"placeholder": _("attribute name")}),
            )

    @staticmethod
    def posted_kinds(data, headers: tuple[str, ...]) -> dict[str, str]:
        """What each column was set to in ``data``, by position, for a re-read.

        The headers may read differently in the new encoding, so an attribute's name is made
        again from its header.
        """
        kinds = {}
        for index, header in enumerate(headers):
            chosen = (data.get(f"col_{index}") or "").strip()
            if chosen in CORE_TARGETS:
                kinds[header] = chosen
            elif chosen:
                kinds[header] = attribute_key(header or f"column {index + 1}")
        return kinds

    def clean_encoding(self) -> str:
        name = self.cleaned_data["encoding"].strip() or "auto"
        if name != "auto":
            try:
                codecs.lookup(name)
            except LookupError:
                raise forms.ValidationError(
                    _("Unknown encoding %(name)s.") % {"name": repr(name)}
                ) from None
        return name

    def _target(self, index: int) -> str:
        chosen = (self.cleaned_data.get(f"col_{index}") or "").strip() or "skip"
        if chosen != ATTRIBUTE:
            return chosen
        return (self.cleaned_data.get(f"col_{index}_attr") or "").strip()

    def clean(self):
        cleaned = super().clean()
        targets = []
        for index in range(len(self.headers)):
            target = self._target(index)
            if not target:
                self.add_error(f"col_{index}_attr", _("Name the attribute, or do not import it."))
            targets.append(target)
        if targets.count("email") != 1:
            raise forms.ValidationError(_("Map exactly one column to Email address."))
        return cleaned

    def mapping(self) -> dict[str, str]:
        return {header: self._target(index) for index, header in enumerate(self.headers)}

    def columns(self) -> list[MappingColumn]:
        return [
            MappingColumn(
                index=index,
                header=header or f"(column {index + 1})",
                examples=self.examples[index] if index < len(self.examples) else (),
                target=self[f"col_{index}"],
                attribute=self[f"col_{index}_attr"],
            )
            for index, header in enumerate(self.headers)
        ]


def validate_storable_json(value: object) -> None:
    """Refuse a JSON value holding NUL or a lone surrogate (a "\\u0000" escape passes the
    form's own NUL check on the raw text): PostgreSQL's jsonb would refuse it with a 500."""
    path = refused_path(value)
    if path is not None:
        raise ValidationError(
            _("%(field)s holds a NUL character or invalid Unicode, which cannot be stored.")
            % {"field": path or _("The value")},
            code="unstorable_text",
        )


class StorableJSONField(forms.JSONField):
    """A JSON form field that refuses what cannot be stored, and can show it again."""

    default_validators = [validate_storable_json]

    def prepare_value(self, value: object) -> str:
        # Shown again after the error: a lone surrogate cannot even be encoded in the page.
        return clean_text(super().prepare_value(value))


class StorableJSONMixin:
    """ModelAdmin mixin: every JSON field of the form is a StorableJSONField."""

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if isinstance(db_field, models.JSONField):
            kwargs.setdefault("form_class", StorableJSONField)
        return super().formfield_for_dbfield(db_field, request, **kwargs)
