"""The admin import wizard (upload -> preview -> start -> progress) and the list export."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from contacts.models import Contact, ContactList, ImportJob, ImportStatus, Suppression
from contacts.tasks import import_job
from tests.factories import ContactListFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def admin_client(client, django_user_model):
    user = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(user)
    return client


def test_wizard_upload_preview_start_and_progress(admin_client, django_capture_on_commit_callbacks):
    content = "邮箱,姓名,城市\nzhang@example.com,张伟,北京\nbad-address,李娜,上海\nZHANG@example.com,dup,\n"
    content += "".join(f"u{i}@example.com,王芳{i},广州\n" for i in range(12))
    upload = SimpleUploadedFile("客户.csv", content.encode("gb18030"), content_type="text/csv")
    response = admin_client.post(
        reverse("admin:contacts_importjob_upload"),
        {"file": upload, "new_list_name": "VIP", "mode": "upsert", "encoding": "auto"},
    )
    job = ImportJob.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:contacts_importjob_preview", args=[job.pk])

    preview = admin_client.get(response["Location"])
    assert preview.status_code == 200
    html = preview.content.decode()
    assert 'id="detected-encoding">gb18030<' in html
    assert 'id="detected-delimiter">comma<' in html
    assert "张伟" in html
    assert html.count("data-line=") == 10  # the first 10 records
    # Rows the import will refuse are marked before it starts, with the import's reasons.
    assert "Will be rejected (Invalid email address)" in html
    assert "Will be rejected (Duplicate in the file): same address as line 2" in html

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        started = admin_client.post(
            response["Location"],
            {"encoding": "auto", "col_0": "email", "col_1": "name", "col_2": "town", "start": "1"},
        )
    assert started.status_code == 302
    assert len(callbacks) == 1  # import_job.delay_on_commit(job.pk)
    import_job(job.pk)  # run the task eagerly, as a worker would

    job.refresh_from_db()
    assert job.status == ImportStatus.DONE
    assert (job.created_count, job.rejected_count, job.processed_rows) == (13, 2, 15)
    assert job.rejected_by_reason == {"duplicate_in_file": 1, "invalid_email": 1}
    assert job.detected_encoding == "gb18030"
    assert Contact.objects.get(email="zhang@example.com").attributes == {"town": "北京"}
    assert ContactList.objects.get(name="VIP").contacts.count() == 13

    progress = admin_client.get(
        reverse("admin:contacts_importjob_progress_json", args=[job.pk])
    ).json()
    assert progress["status"] == "done"
    assert (progress["processed_rows"], progress["total_rows"], progress["percent"]) == (
        15,
        15,
        100.0,
    )
    page = admin_client.get(reverse("admin:contacts_importjob_change", args=[job.pk]), follow=True)
    assert b"Download rejected rows (CSV)" in page.content

    rejected = admin_client.get(reverse("admin:contacts_importjob_rejected_csv", args=[job.pk]))
    lines = rejected.content.decode("utf-8-sig").splitlines()
    assert lines[0] == "line,reason,detail"
    assert lines[1].startswith("3,invalid_email,")
    assert lines[2] == "4,duplicate_in_file,same address as line 2"


def test_wizard_requires_a_list_except_for_suppression(admin_client):
    upload = SimpleUploadedFile("a.csv", b"email\na@example.com\n")
    response = admin_client.post(
        reverse("admin:contacts_importjob_upload"),
        {"file": upload, "mode": "upsert", "encoding": "auto"},
    )
    assert response.status_code == 200
    assert b"Choose a list or name a new one." in response.content
    assert ImportJob.objects.count() == 0


def test_list_export_action_neutralizes_formulas_and_starts_with_bom(admin_client):
    contact_list = ContactListFactory(name="Export me")
    SubscriptionFactory(
        contact__email="a@example.com",
        contact__name='=HYPERLINK("http://x")',
        contact__attributes={"note": "+1 555", "city": "北京"},
        contact_list=contact_list,
    )
    SubscriptionFactory(
        contact__email="b@example.com", contact__name="@SUM(A1)", contact_list=contact_list
    )
    response = admin_client.post(
        reverse("admin:contacts_contactlist_changelist"),
        {"action": "export_csv", "_selected_action": [contact_list.pk]},
    )
    assert response.status_code == 200
    body = response.content
    assert body.startswith(b"\xef\xbb\xbf")
    rows = body.decode("utf-8-sig").splitlines()
    assert rows[0] == "email,name,status,subscription,city,note"
    assert rows[1] == 'a@example.com,"\'=HYPERLINK(""http://x"")",active,subscribed,北京,\'+1 555'
    assert rows[2] == "b@example.com,'@SUM(A1),active,subscribed,,"


def test_admin_pages_render(admin_client):
    SubscriptionFactory(contact__attributes={"城市": "北京"})
    for name in ("contactlist", "contact", "suppression", "importjob"):
        assert admin_client.get(reverse(f"admin:contacts_{name}_changelist")).status_code == 200
    contact = Contact.objects.get()
    page = admin_client.get(reverse("admin:contacts_contact_change", args=[contact.pk]))
    assert page.status_code == 200
    assert "北京" in page.content.decode()


def test_suppression_added_in_admin_goes_through_the_service(admin_client):
    response = admin_client.post(
        reverse("admin:contacts_suppression_add"),
        {"value": "  Someone@Example.COM ", "reason": "manual", "source": ""},
    )
    assert response.status_code == 302
    suppression = Suppression.objects.get()
    assert (suppression.value, suppression.scope, suppression.source) == (
        "someone@example.com",
        "address",
        "admin",
    )


# --- the wizard as a browser sees it (server side; tests/contacts/test_admin_browser.py clicks) --


def _upload(admin_client, name: str, content: bytes, **fields) -> ImportJob:
    data = {"file": SimpleUploadedFile(name, content), "mode": "upsert", "encoding": "auto"}
    data.update(fields)
    response = admin_client.post(reverse("admin:contacts_importjob_upload"), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    return ImportJob.objects.latest("pk")


def _workbook(rows: list[list], *, write_only: bool = False) -> bytes:
    import io

    from openpyxl import Workbook

    workbook = Workbook(write_only=write_only)
    sheet = workbook.create_sheet() if write_only else workbook.active
    for row in rows:
        sheet.append(row)
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def test_upload_form_uses_unfold_widgets_so_the_file_name_stays_out_of_the_list_name(
    admin_client,
):
    # Unfold's script writes a chosen file's name into the first text input three levels up
    # from the file input: with a bare <input type=file> that was "New list name".
    html = admin_client.get(reverse("admin:contacts_importjob_upload")).content.decode()
    assert 'aria-label="Choose file to upload"' in html
    assert 'accept=".csv,.tsv,.txt,.xlsx"' in html


def test_preview_guesses_the_email_column_from_its_values_and_maps_by_menu(admin_client):
    content = "Adresse;Nom;Ville\nanna@example.com;Anna;Wien\nbob@example.org;Bob;Graz\n"
    job = _upload(admin_client, "kunden.csv", content.encode(), new_list_name="AT")
    preview_url = reverse("admin:contacts_importjob_preview", args=[job.pk])
    form = admin_client.get(preview_url).context["form"]
    assert [form.fields[f"col_{i}"].initial for i in range(3)] == [
        "email",  # from its values: "Adresse" may be a postal address
        "name",  # French "Nom"
        "attribute",
    ]
    assert form.fields["col_2_attr"].initial == "city"  # French "Ville"

    missing_name = admin_client.post(
        preview_url,
        {"encoding": "auto", "col_0": "email", "col_1": "name", "col_2": "attribute", "start": "1"},
    )
    assert missing_name.status_code == 200
    assert "Name the attribute, or do not import it." in missing_name.content.decode()

    started = admin_client.post(
        preview_url,
        {
            "encoding": "auto",
            "col_0": "email",
            "col_1": "name",
            "col_2": "attribute",
            "col_2_attr": "town",
            "start": "1",
        },
    )
    assert started.status_code == 302
    job.refresh_from_db()
    assert job.mapping == {"Adresse": "email", "Nom": "name", "Ville": "town"}


def test_reread_in_another_encoding_keeps_the_column_choices(admin_client):
    content = "Adresse;Nom;Ville\nanna@example.com;Anna;Köln\n".encode("cp1252")
    job = _upload(admin_client, "k.csv", content, new_list_name="DE")
    response = admin_client.post(
        reverse("admin:contacts_importjob_preview", args=[job.pk]),
        {"encoding": "cp1252", "col_0": "email", "col_1": "name", "col_2": "skip", "reload": "1"},
    )
    assert response.status_code == 200
    assert "Köln" in response.content.decode()
    form = response.context["form"]
    assert [form.fields[f"col_{i}"].initial for i in range(3)] == ["email", "name", "skip"]
    assert form.initial["encoding"] == "cp1252"


def test_workbook_job_page_shows_a_percentage_while_it_runs(admin_client):
    rows = [["Email", "Name"]] + [[f"u{i}@example.com", f"U {i}"] for i in range(40)]
    job = _upload(admin_client, "book.xlsx", _workbook(rows), new_list_name="XL")
    preview_url = reverse("admin:contacts_importjob_preview", args=[job.pk])
    html = admin_client.get(preview_url).content.decode()
    assert "Excel workbook (first sheet)" in html
    assert 'name="reload"' not in html  # no encoding to re-read a workbook with

    response = admin_client.post(
        preview_url, {"encoding": "auto", "col_0": "email", "col_1": "name", "start": "1"}
    )
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.options["expected_rows"] == 40

    # What import_job_run records part-way through a workbook: no bytes read, so its
    # estimated total is the rows done so far.
    ImportJob.objects.filter(pk=job.pk).update(
        status=ImportStatus.RUNNING,
        started_at=timezone.now() - timedelta(seconds=10),
        processed_rows=10,
        total_rows=10,
        detected_encoding="xlsx",
    )
    url = reverse("admin:contacts_importjob_progress_json", args=[job.pk])
    progress = admin_client.get(url).json()
    assert (progress["total_rows"], progress["percent"]) == (40, 25.0)
    assert progress["seconds_left"] == pytest.approx(30, abs=1)
    assert progress["status_label"] == "Running"

    ImportJob.objects.filter(pk=job.pk).update(options={})  # a job started before the fix
    progress = admin_client.get(url).json()
    assert (progress["total_rows"], progress["percent"], progress["seconds_left"]) == (
        None,
        None,
        None,
    )

    import_job(job.pk)
    progress = admin_client.get(url).json()
    assert (progress["status"], progress["total_rows"], progress["percent"]) == ("done", 40, 100.0)


@pytest.mark.parametrize("write_only", [False, True], ids=["dimension", "counted"])
def test_workbook_rows_read_from_the_dimension_or_counted(write_only):
    import io

    from contacts.admin import _workbook_rows

    rows = [["email"]] + [[f"u{i}@example.com"] for i in range(2500)]
    assert _workbook_rows(io.BytesIO(_workbook(rows, write_only=write_only))) == 2500


def test_workbook_rows_of_something_else_is_none():
    import io

    from contacts.admin import _workbook_rows

    assert _workbook_rows(io.BytesIO(b"email\na@example.com\n")) is None
    assert _workbook_rows(io.BytesIO(b"PK\x03\x04 not really a zip")) is None


def test_old_excel_files_get_told_how_to_save_them(admin_client):
    response = admin_client.post(
        reverse("admin:contacts_importjob_upload"),
        {
            "file": SimpleUploadedFile("list.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"),
            "new_list_name": "Old",
            "mode": "upsert",
            "encoding": "auto",
        },
    )
    assert response.status_code == 200
    assert "save it as Excel Workbook (.xlsx) or CSV UTF-8" in response.content.decode()
    assert ImportJob.objects.count() == 0


def test_a_job_nothing_has_read_yet_has_no_total(admin_client):
    job = _upload(admin_client, "a.csv", b"email\na@example.com\n", new_list_name="A")
    url = reverse("admin:contacts_importjob_progress_json", args=[job.pk])
    progress = admin_client.get(url).json()
    assert (progress["status_label"], progress["total_rows"], progress["percent"]) == (
        "Pending",
        None,
        None,
    )
    page = admin_client.get(reverse("admin:contacts_importjob_progress", args=[job.pk]))
    assert 'id="rejected-link"' in page.content.decode()
    assert page.content.decode().count(" hidden>Download rejected rows") == 1  # not yet
