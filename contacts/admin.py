"""Admin for contacts, lists, suppressions and the import wizard: thin, calls services."""

from __future__ import annotations

import io
import json

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from unfold.admin import ModelAdmin, TabularInline
from unfold.decorators import display

from contacts.errors import ContactsError
from contacts.forms import ImportMappingForm, ImportUploadForm, StorableJSONMixin
from contacts.imports import import_job_create, import_job_start, rejected_rows_csv
from contacts.imports.csvparse import XLSX_MAGIC, preview_file
from contacts.imports.xlsxparse import workbook_data_rows
from contacts.models import (
    Contact,
    ContactList,
    ImportJob,
    ImportMode,
    ImportStatus,
    Subscription,
    Suppression,
)
from contacts.normalize import (
    EmailPolicy,
    InvalidEmail,
    RejectReason,
    normalize_email,
    reject_reason_label,
)
from contacts.selectors import contact_lists_with_counts
from contacts.services import (
    contact_list_get_or_create,
    contacts_export,
    suppression_add,
    suppression_remove,
)


@admin.register(ContactList)
class ContactListAdmin(ModelAdmin):
    list_display = ("name", "subscribed", "total", "created_at")
    search_fields = ("name",)
    actions = ("export_csv",)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return contact_lists_with_counts()

    @display(description=gettext_lazy("Subscribed"), ordering="subscribed_count")
    def subscribed(self, obj: ContactList) -> int:
        return obj.subscribed_count

    @display(description=gettext_lazy("All subscriptions"), ordering="total_count")
    def total(self, obj: ContactList) -> int:
        return obj.total_count

    @admin.action(description=gettext_lazy("Export as CSV"))
    def export_csv(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        if queryset.count() != 1:
            self.message_user(request, _("Export one list at a time."), messages.WARNING)
            return None
        contact_list = queryset.get()
        buffer = io.StringIO()
        contacts_export(contact_list=contact_list, output=buffer)
        response = HttpResponse(
            buffer.getvalue().encode("utf-8"), content_type="text/csv; charset=utf-8"
        )
        filename = f"contacts-{contact_list.pk}-{timezone.now():%Y%m%d}.csv"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response


class SubscriptionInline(TabularInline):
    model = Subscription
    extra = 0
    fields = ("contact_list", "status", "source", "created_at")
    readonly_fields = ("source", "created_at")
    autocomplete_fields = ("contact_list",)


@admin.register(Contact)
class ContactAdmin(StorableJSONMixin, ModelAdmin):
    list_display = ("email", "name", "status", "created_at")
    list_filter = ("status", "subscriptions__contact_list")
    search_fields = ("email", "name")
    readonly_fields = ("attributes_readable", "created_at", "updated_at")
    fields = (
        "email",
        "name",
        "status",
        "attributes",
        "attributes_readable",
        "created_at",
        "updated_at",
    )
    inlines = (SubscriptionInline,)

    @display(description=gettext_lazy("Attributes (readable)"))
    def attributes_readable(self, obj: Contact) -> str:
        if not obj.attributes:
            return "-"
        return format_html(
            "<pre style='white-space:pre-wrap'>{}</pre>",
            json.dumps(obj.attributes, ensure_ascii=False, indent=2, sort_keys=True),
        )


@admin.register(Suppression)
class SuppressionAdmin(ModelAdmin):
    list_display = ("value", "scope", "reason", "source", "created_at")
    list_filter = ("scope", "reason")
    search_fields = ("value", "source")
    fields = ("value", "reason", "source")

    def get_readonly_fields(self, request: HttpRequest, obj: Suppression | None = None):
        return ("value", "scope") if obj else ()

    def save_model(self, request: HttpRequest, obj: Suppression, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        try:
            saved = suppression_add(
                value=obj.value, reason=obj.reason, source=obj.source or "admin"
            )
        except ContactsError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        obj.pk, obj.value, obj.scope = saved.pk, saved.value, saved.scope

    def delete_model(self, request: HttpRequest, obj: Suppression) -> None:
        suppression_remove(suppression=obj)


IMPORT_STEPS = (
    (1, gettext_lazy("Upload a file")),
    (2, gettext_lazy("Check the preview and columns")),
    (3, gettext_lazy("Import")),
)


@admin.register(ImportJob)
class ImportJobAdmin(ModelAdmin):
    list_display = (
        "id",
        "original_name",
        "contact_list",
        "mode",
        "status",
        "processed_rows",
        "created_count",
        "updated_count",
        "rejected_count",
        "created_at",
    )
    list_filter = ("status", "mode")
    readonly_fields = [f.name for f in ImportJob._meta.fields]

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("upload/", wrap(self.upload_view), name="contacts_importjob_upload"),
            path(
                "<int:job_id>/preview/", wrap(self.preview_view), name="contacts_importjob_preview"
            ),
            path(
                "<int:job_id>/progress/",
                wrap(self.progress_view),
                name="contacts_importjob_progress",
            ),
            path(
                "<int:job_id>/progress.json",
                wrap(self.progress_json_view),
                name="contacts_importjob_progress_json",
            ),
            path(
                "<int:job_id>/rejected.csv",
                wrap(self.rejected_csv_view),
                name="contacts_importjob_rejected_csv",
            ),
            *super().get_urls(),
        ]

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context=None):
        return redirect(reverse("admin:contacts_importjob_upload"))

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None
    ):
        return redirect(reverse("admin:contacts_importjob_progress", args=[object_id]))

    def _context(self, request: HttpRequest, title: str, **extra) -> dict:
        return {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.model._meta,
            "import_steps": IMPORT_STEPS,
            **extra,
        }

    def upload_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            return HttpResponse(status=403)
        form = ImportUploadForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            contact_list = data["contact_list"]
            if contact_list is None and data["new_list_name"].strip():
                contact_list = contact_list_get_or_create(name=data["new_list_name"].strip())
            job = import_job_create(
                file=data["file"],
                original_name=data["file"].name,
                contact_list=contact_list,
                mode=data["mode"],
                encoding=form.chosen_encoding,
                options={
                    "reject_role": data["reject_role"],
                    "reject_disposable": data["reject_disposable"],
                },
            )
            return redirect(reverse("admin:contacts_importjob_preview", args=[job.pk]))
        return TemplateResponse(
            request,
            "admin/contacts/import_upload.html",
            self._context(request, _("Import contacts"), form=form),
        )

    def preview_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        job = get_object_or_404(ImportJob, pk=job_id)
        if job.status != ImportStatus.PENDING or job.started_at:
            return redirect(reverse("admin:contacts_importjob_progress", args=[job.pk]))
        posted = request.method == "POST"
        encoding = request.POST.get("encoding", job.encoding) if posted else job.encoding
        preview, error = _read_preview(job, encoding)
        headers = preview.info.headers if preview else ()
        rows = preview.rows if preview else []
        examples = _column_examples(rows, len(headers))
        mapping = job.mapping or _with_email_guess(
            preview.mapping if preview else {}, headers, examples
        )
        if posted and "reload" in request.POST:
            # Re-read with another encoding: keep what the columns were set to.
            mapping = {**mapping, **ImportMappingForm.posted_kinds(request.POST, headers)}
        starting = posted and "start" in request.POST
        form = ImportMappingForm(
            request.POST if starting else None,
            headers=headers,
            mapping=mapping,
            examples=examples,
            initial={"encoding": encoding or "auto"},
        )
        if preview and starting and form.is_valid():
            _import_start(job, form, workbook=preview.info.kind == "xlsx")
            return redirect(reverse("admin:contacts_importjob_progress", args=[job.pk]))
        context = self._context(
            request,
            _("Preview: %(file)s") % {"file": job.original_name},
            job=job,
            preview=preview,
            is_workbook=bool(preview and preview.info.kind == "xlsx"),
            delimiter=_delimiter_label(preview.info.delimiter) if preview else "",
            error=error,
            form=form,
            rows=_preview_rows(rows, headers, mapping, job.options),
        )
        return TemplateResponse(request, "admin/contacts/import_preview.html", context)

    def progress_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        job = get_object_or_404(ImportJob, pk=job_id)
        context = self._context(
            request,
            _("Import #%(id)s: %(file)s") % {"id": job.pk, "file": job.original_name},
            job=job,
            progress=_progress(job),
        )
        return TemplateResponse(request, "admin/contacts/import_progress.html", context)

    def progress_json_view(self, request: HttpRequest, job_id: int) -> JsonResponse:
        return JsonResponse(_progress(get_object_or_404(ImportJob, pk=job_id)))

    def rejected_csv_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        job = get_object_or_404(ImportJob, pk=job_id)
        buffer = io.StringIO()
        rejected_rows_csv(rows=job.rejected_rows or [], output=buffer)
        response = HttpResponse(
            buffer.getvalue().encode("utf-8"), content_type="text/csv; charset=utf-8"
        )
        response["Content-Disposition"] = f'attachment; filename="import-{job.pk}-rejected.csv"'
        return response


def _progress(job: ImportJob) -> dict:
    """Figures for the job page: rows done, total, rate, time left.

    ``total_rows`` is an estimate while the job runs (from the bytes read, or for a workbook
    the rows counted when it started) and None when there is none: the page then shows no
    percentage rather than a wrong one.
    """
    now = timezone.now()
    end = job.finished_at or now
    elapsed = (end - job.started_at).total_seconds() if job.started_at else 0.0
    rate = job.processed_rows / elapsed if elapsed > 0 else 0.0
    done = job.status in (ImportStatus.DONE, ImportStatus.FAILED)
    total: int | None = max(job.total_rows, job.processed_rows)
    if not done:
        expected = (job.options or {}).get("expected_rows")
        if expected:
            total = max(int(expected), job.processed_rows)
        elif job.detected_encoding == "xlsx" or not total:
            # Nothing read yet, or a workbook: workbooks report no bytes read
            # (contacts.imports.csvparse), so job.total_rows is only the rows done so far, which
            # made a bar at 100% from the first second.
            total = None
    if job.status == ImportStatus.DONE:
        percent: float | None = 100.0
    elif total:
        percent = min(100.0, round(100.0 * job.processed_rows / total, 1))
    else:
        percent = None if total is None else 0.0
    remaining = max(0, total - job.processed_rows) if total else None
    return {
        "status": job.status,
        "status_label": ImportStatus(job.status).label,
        "processed_rows": job.processed_rows,
        "total_rows": total,
        "percent": percent,
        "rate": round(rate, 1),
        "seconds_left": None
        if done or not rate or remaining is None
        else round(remaining / rate, 1),
        "elapsed": round(elapsed, 1),
        "created": job.created_count,
        "updated": job.updated_count,
        "unchanged": job.unchanged_count,
        "rejected": job.rejected_count,
        # Sentences, not codes ("Duplicate in the file: 3", not "duplicate_in_file: 3").
        "rejected_by_reason": {
            reject_reason_label(code): count for code, count in job.rejected_by_reason.items()
        },
        "encoding": job.detected_encoding,
        "delimiter": _delimiter_label(job.detected_delimiter),
        "error": job.error,
        "finished": done,
        "mode": ImportMode(job.mode).label,
    }


def _delimiter_label(delimiter: str | None) -> str:
    names = {"\t": _("tab"), ",": _("comma"), ";": _("semicolon"), "|": _("pipe")}
    return names.get(delimiter or "", delimiter or "")


def _preview_rows(rows, headers: tuple[str, ...], mapping: dict, options: dict | None) -> list:
    """The preview's rows, each with the reason the import would reject it, when known.

    Besides what the reader finds (undecodable bytes, malformed rows), the address in the
    column guessed as email is checked as the import will check it.
    """
    email_column = next(
        (index for index, header in enumerate(headers) if mapping.get(header) == "email"), None
    )
    policy = EmailPolicy(
        reject_role=bool((options or {}).get("reject_role")),
        reject_disposable=bool((options or {}).get("reject_disposable")),
    )
    result = []
    first_line: dict[str, int] = {}
    for row in rows:
        reason, detail = row.reason, row.detail
        if not reason and email_column is not None:
            raw = row.fields[email_column] if email_column < len(row.fields) else ""
            try:
                key = normalize_email(raw, policy=policy).lower()
            except InvalidEmail as exc:
                reason, detail = exc.reason, exc.detail
            else:
                if key in first_line:
                    reason = RejectReason.DUPLICATE_IN_FILE
                    detail = _("same address as line %(line)s") % {"line": first_line[key]}
                first_line.setdefault(key, row.line)
        unreadable = bool(row.reason)  # the reader could not split it into fields
        result.append(
            {
                "line": row.line,
                "fields": row.fields,
                "reason": reason,
                "reason_label": reject_reason_label(reason) if reason else "",
                "detail": detail,
                "unreadable": unreadable,
            }
        )
    return result


def _column_examples(rows, columns: int, limit: int = 3) -> list[tuple[str, ...]]:
    """Up to ``limit`` distinct non-empty values per column from the preview rows."""
    examples: list[list[str]] = [[] for _ in range(columns)]
    for row in rows:
        if row.reason:
            continue
        for index, value in enumerate(row.fields[:columns]):
            value = value.strip()
            if value and value not in examples[index] and len(examples[index]) < limit:
                examples[index].append(value)
    return [tuple(values) for values in examples]


def _with_email_guess(
    mapping: dict[str, str], headers: tuple[str, ...], examples: list[tuple[str, ...]]
) -> dict[str, str]:
    """When no header reads as an email column, take the column whose values look like one."""
    if "email" in mapping.values() or not headers:
        return mapping
    scores = [sum("@" in value for value in values) for values in examples]
    best = max(range(len(scores)), key=scores.__getitem__, default=None)
    if best is None or not scores[best]:
        return mapping
    return {**mapping, headers[best]: "email"}


def _workbook_rows(handle) -> int | None:
    """The data rows of a workbook's first sheet, for the progress estimate (or None)."""
    if handle.read(4) != XLSX_MAGIC:
        return None
    handle.seek(0)
    return workbook_data_rows(handle)


def _read_preview(job: ImportJob, encoding: str | None):
    """The file's first rows read with ``encoding``, or None and why it cannot be read."""
    try:
        with job.file.open("rb") as handle:
            return preview_file(handle, encoding=encoding or "auto"), None
    except (ContactsError, LookupError) as exc:
        return None, str(exc)


def _import_start(job: ImportJob, form: ImportMappingForm, *, workbook: bool) -> None:
    """Save the chosen mapping and encoding, then start the import."""
    job.mapping = form.mapping()
    job.encoding = form.cleaned_data["encoding"]
    update_fields = ["mapping", "encoding"]
    if workbook:
        # The reader reports no byte progress for workbooks, so the job page needs the
        # number of rows up front to show a percentage and the time left.
        with job.file.open("rb") as handle:
            job.options = {**(job.options or {}), "expected_rows": _workbook_rows(handle)}
        update_fields.append("options")
    job.save(update_fields=update_fields)
    import_job_start(job=job)


from contacts.segment_admin import *  # noqa: E402,F401,F403
from contacts.signup_admin import *  # noqa: E402,F401,F403
