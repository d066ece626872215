"""Campaign attachments named by a marketer in the admin: hostile names and types, sent for real."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from campaigns.models import CampaignAttachment
from campaigns.sending.batch import campaign_send_batch
from campaigns.sending.dispatch import campaign_dispatch
from campaigns.services import campaign_send
from tests.factories import CampaignFactory, audience
from tests.mail_readers import assert_received_safely

pytestmark = pytest.mark.django_db


@pytest.fixture
def campaign(settings, smtp_server, tmp_path, monkeypatch):
    settings.EDM_SMTP_URL = smtp_server.url
    settings.EDM_SMTP_TLS_CA_FILE = smtp_server.ca_file
    settings.MEDIA_ROOT = tmp_path
    from campaigns import tasks

    monkeypatch.setattr(tasks.campaign_dispatch, "delay_on_commit", lambda *a: None)
    monkeypatch.setattr(tasks.campaign_send_batch, "delay", lambda *a: None)
    return CampaignFactory(
        lists=[audience(1)], html='<p>Hi</p><a href="{{ unsubscribe_url }}">Stop</a>'
    )


def _change_form_data(admin_client, campaign) -> dict:
    """The change form as the admin page fills it in, with an empty attachments formset."""
    url = reverse("admin:campaigns_campaign_change", args=[campaign.pk])
    form = admin_client.get(url).context["adminform"].form
    data = {}
    for name in form.fields:
        value = form[name].value()
        if value is None:
            continue
        data[form[name].html_name] = (
            [getattr(v, "pk", v) for v in value] if isinstance(value, list | tuple) else value
        )
    data.update(
        {
            "attachments-TOTAL_FORMS": "1",
            "attachments-INITIAL_FORMS": "0",
            "attachments-MIN_NUM_FORMS": "0",
            "attachments-MAX_NUM_FORMS": "1000",
        }
    )
    return data


def _upload(admin_client, campaign, **fields):
    data = _change_form_data(admin_client, campaign)
    data["attachments-0-file"] = SimpleUploadedFile("upload.bin", b"MZ payload")
    for name, value in fields.items():
        data[f"attachments-0-{name}"] = value
    url = reverse("admin:campaigns_campaign_change", args=[campaign.pk])
    return admin_client.post(url, data)


def test_a_hostile_name_given_in_the_admin_reaches_the_recipient_as_a_plain_name(
    admin_client, campaign, smtp_server
):
    response = _upload(admin_client, campaign, filename="=?utf-8?b?Li4vLi4vZXZpbC5leGU=?=")
    assert response.status_code == 302, response.context["inline_admin_formsets"][0].formset.errors
    _upload(admin_client, campaign, filename="=?utf-8?q?a=0D=0ABcc:_victim@example.org?=.txt")
    _upload(admin_client, campaign, filename="report\u202efdp.exe")
    assert CampaignAttachment.objects.filter(campaign=campaign).count() == 3
    campaign_send(campaign_id=campaign.pk)
    campaign_dispatch(campaign_id=campaign.pk)
    campaign_send_batch(campaign_id=campaign.pk)
    [received] = smtp_server.wait_for_messages(1)
    views = assert_received_safely(received.data, 3)
    assert sorted(views["python-default"]) == [
        "a Bcc_ victim@example.org.txt",
        "evil.exe",
        "reportfdp.exe",
    ]
    assert sorted(views["fast-mail-parser (Rust mailparse)"]) == sorted(views["python-default"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("content_type", "text/plain\r\nBcc: victim@example.org"),
        ("content_type", "text/html; charset=utf-7"),
        ("content_id", "logo\r\nBcc: victim@example.org"),
        ("content_id", "logo@x; name=evil.exe"),
    ],
)
def test_a_type_or_content_id_with_a_line_break_or_parameters_is_a_form_error(
    admin_client, campaign, field, value
):
    response = _upload(admin_client, campaign, filename="a.png", **{field: value})
    assert response.status_code == 200
    [formset] = [f.formset for f in response.context["inline_admin_formsets"]]
    assert field in formset.errors[0]
    assert not CampaignAttachment.objects.exists()
