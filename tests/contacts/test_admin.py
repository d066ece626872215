"""The admin import wizard (upload -> preview -> start -> progress) and the list export."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

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
    assert 'id="detected-delimiter">,<' in html
    assert "张伟" in html
    assert html.count("<tr>") == 11  # header row + the first 10 records

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
