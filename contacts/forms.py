"""Forms for the contacts admin: the import wizard."""

from __future__ import annotations

import codecs

from django import forms

from contacts.csvparse import CORE_TARGETS
from contacts.models import ContactList, ImportMode

ENCODING_CHOICES = [
    ("auto", "Detect automatically"),
    ("utf-8", "UTF-8"),
    ("utf-16", "UTF-16 (with BOM)"),
    ("gb18030", "GB18030 / GBK / GB2312 (Simplified Chinese)"),
    ("big5", "Big5 (Traditional Chinese)"),
    ("shift_jis", "Shift_JIS (Japanese)"),
    ("cp1252", "Windows-1252 / Latin-1"),
]
ALLOWED_EXTENSIONS = (".csv", ".tsv", ".txt", ".xlsx")


class ImportUploadForm(forms.Form):
    file = forms.FileField(help_text="CSV, TSV or XLSX; the first row holds the column names.")
    contact_list = forms.ModelChoiceField(
        queryset=ContactList.objects.all(), required=False, help_text="The list to import into."
    )
    new_list_name = forms.CharField(
        max_length=200, required=False, help_text="Or create a new list with this name."
    )
    mode = forms.ChoiceField(choices=ImportMode.choices, initial=ImportMode.UPSERT)
    encoding = forms.ChoiceField(choices=ENCODING_CHOICES, initial="auto")
    other_encoding = forms.CharField(
        max_length=40, required=False, help_text="Any other codec name (overrides the choice)."
    )
    reject_role = forms.BooleanField(required=False, label="Reject role addresses (info@ ...)")
    reject_disposable = forms.BooleanField(required=False, label="Reject disposable domains")

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if not upload.name.lower().endswith(ALLOWED_EXTENSIONS):
            raise forms.ValidationError("Upload a .csv, .tsv, .txt or .xlsx file.")
        return upload

    def clean_other_encoding(self) -> str:
        name = self.cleaned_data["other_encoding"].strip()
        if name:
            try:
                codecs.lookup(name)
            except LookupError:
                raise forms.ValidationError(f"Unknown encoding {name!r}.") from None
        return name

    def clean(self):
        cleaned = super().clean()
        mode = cleaned.get("mode")
        has_list = cleaned.get("contact_list") or (cleaned.get("new_list_name") or "").strip()
        if mode != ImportMode.SUPPRESS and not has_list:
            raise forms.ValidationError("Choose a list or name a new one.")
        return cleaned

    @property
    def chosen_encoding(self) -> str:
        return self.cleaned_data.get("other_encoding") or self.cleaned_data["encoding"]


class ImportMappingForm(forms.Form):
    """One text field per column: email, name, first_name, last_name, skip or an attribute."""

    encoding = forms.CharField(
        max_length=40, help_text="auto or a codec name (utf-8, gb18030 ...)."
    )

    def __init__(self, *args, headers: tuple[str, ...], mapping: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.headers = headers
        for index, header in enumerate(headers):
            self.fields[f"col_{index}"] = forms.CharField(
                label=header or f"(column {index + 1})",
                initial=mapping.get(header, "skip"),
                max_length=100,
                help_text=" | ".join(CORE_TARGETS) + " | or an attribute name",
            )

    def clean_encoding(self) -> str:
        name = self.cleaned_data["encoding"].strip() or "auto"
        if name != "auto":
            try:
                codecs.lookup(name)
            except LookupError:
                raise forms.ValidationError(f"Unknown encoding {name!r}.") from None
        return name

    def clean(self):
        cleaned = super().clean()
        targets = [cleaned.get(f"col_{i}", "").strip() for i in range(len(self.headers))]
        if targets.count("email") != 1:
            raise forms.ValidationError("Map exactly one column to email.")
        return cleaned

    def mapping(self) -> dict[str, str]:
        return {
            header: self.cleaned_data[f"col_{index}"].strip() or "skip"
            for index, header in enumerate(self.headers)
        }
