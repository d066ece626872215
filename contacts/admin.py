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
from unfold.admin import ModelAdmin, TabularInline
from unfold.decorators import display

from contacts.csvparse import preview_file
from contacts.errors import ContactsError
from contacts.forms import ImportMappingForm, ImportUploadForm
from contacts.models import (
    Contact,
    ContactList,
    ImportJob,
    ImportMode,
    ImportStatus,
    Subscription,
    Suppression,
)
from contacts.selectors import contact_lists_with_counts
from contacts.services import (
    contact_list_get_or_create,
    contacts_export,
    import_job_create,
    import_job_start,
    rejected_rows_csv,
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

    @display(description="Subscribed", ordering="subscribed_count")
    def subscribed(self, obj: ContactList) -> int:
        return obj.subscribed_count

    @display(description="All subscriptions", ordering="total_count")
    def total(self, obj: ContactList) -> int:
        return obj.total_count

    @admin.action(description="Export as CSV")
    def export_csv(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        if queryset.count() != 1:
            self.message_user(request, "Export one list at a time.", messages.WARNING)
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
class ContactAdmin(ModelAdmin):
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

    @display(description="Attributes (readable)")
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
            self._context(request, "Import contacts", form=form),
        )

    def preview_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        job = get_object_or_404(ImportJob, pk=job_id)
        if job.status != ImportStatus.PENDING or job.started_at:
            return redirect(reverse("admin:contacts_importjob_progress", args=[job.pk]))
        encoding = (
            request.POST.get("encoding", job.encoding) if request.method == "POST" else job.encoding
        )
        preview = error = None
        try:
            with job.file.open("rb") as handle:
                preview = preview_file(handle, encoding=encoding or "auto")
        except (ContactsError, LookupError) as exc:
            error = str(exc)
        headers = preview.info.headers if preview else ()
        mapping = job.mapping or (preview.mapping if preview else {})
        form = ImportMappingForm(
            request.POST if request.method == "POST" and "start" in request.POST else None,
            headers=headers,
            mapping=mapping,
            initial={"encoding": encoding},
        )
        if preview and request.method == "POST" and "start" in request.POST and form.is_valid():
            job.mapping = form.mapping()
            job.encoding = form.cleaned_data["encoding"]
            job.save(update_fields=["mapping", "encoding"])
            import_job_start(job=job)
            return redirect(reverse("admin:contacts_importjob_progress", args=[job.pk]))
        context = self._context(
            request,
            f"Preview: {job.original_name}",
            job=job,
            preview=preview,
            error=error,
            form=form,
            rows=[
                {"line": r.line, "fields": r.fields, "reason": r.reason, "detail": r.detail}
                for r in (preview.rows if preview else [])
            ],
        )
        return TemplateResponse(request, "admin/contacts/import_preview.html", context)

    def progress_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        job = get_object_or_404(ImportJob, pk=job_id)
        context = self._context(
            request, f"Import #{job.pk}: {job.original_name}", job=job, progress=_progress(job)
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
    """Figures for the job page: rows done, total, rate, time left."""
    now = timezone.now()
    end = job.finished_at or now
    elapsed = (end - job.started_at).total_seconds() if job.started_at else 0.0
    rate = job.processed_rows / elapsed if elapsed > 0 else 0.0
    total = max(job.total_rows, job.processed_rows)
    remaining = max(0, total - job.processed_rows)
    done = job.status in (ImportStatus.DONE, ImportStatus.FAILED)
    return {
        "status": job.status,
        "processed_rows": job.processed_rows,
        "total_rows": total,
        "percent": 100.0
        if job.status == ImportStatus.DONE
        else (round(100.0 * job.processed_rows / total, 1) if total else 0.0),
        "rate": round(rate, 1),
        "seconds_left": None if done or not rate else round(remaining / rate, 1),
        "elapsed": round(elapsed, 1),
        "created": job.created_count,
        "updated": job.updated_count,
        "unchanged": job.unchanged_count,
        "rejected": job.rejected_count,
        "rejected_by_reason": job.rejected_by_reason,
        "encoding": job.detected_encoding,
        "delimiter": job.detected_delimiter,
        "error": job.error,
        "finished": done,
        "mode": ImportMode(job.mode).label,
    }


from contacts.segment_admin import *  # noqa: E402,F401,F403
from contacts.signup_admin import *  # noqa: E402,F401,F403
