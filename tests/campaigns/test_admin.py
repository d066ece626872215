"""Campaign and template admin: pre-flight, preview, send test, Send now refusing on errors."""

import html
import json

import pytest
from django.urls import reverse

from campaigns.models import Campaign, CampaignStatus, Template
from tests.factories import ContactFactory, ContactListFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db

GOOD_HTML = (
    "<p>Hi {{ name }} from {{ city }}</p><script>parent.alert(1)</script>"
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
)


@pytest.fixture
def campaign():
    contact_list = ContactListFactory(name="Admin")
    for i in range(3):
        SubscriptionFactory(
            contact=ContactFactory(
                email=f"r{i}@example.org", name=f"Reader {i}", attributes={"city": f"City{i}"}
            ),
            contact_list=contact_list,
        )
    campaign = Campaign.objects.create(
        name="Spring", subject="Hello {{ first_name }}", html=GOOD_HTML,
        from_email="news@example.com",
    )  # fmt: skip
    campaign.lists.set([contact_list])
    return campaign


def _change_url(campaign):
    return reverse("admin:campaigns_campaign_change", args=[campaign.pk])


def test_preflight_action_shows_the_findings_on_the_campaign_page(admin_client, campaign):
    url = reverse("admin:campaigns_campaign_preflight", args=[campaign.pk])
    response = admin_client.get(url, follow=True)
    assert response.status_code == 200
    body = response.content.decode()
    assert 'id="preflight"' in body
    assert 'data-code="no_dkim_key"' in body  # a warning
    assert "nothing stops a send" in body
    assert "3 of 3 recipients rendered" in body


def test_send_now_refuses_on_preflight_errors_and_shows_them(admin_client, campaign):
    campaign.html = "<p>No way out {{ name }}</p>"
    campaign.save()
    url = reverse("admin:campaigns_campaign_send_now", args=[campaign.pk])
    response = admin_client.get(url, follow=True)
    body = response.content.decode()
    assert "Not sent" in body
    assert 'data-code="no_unsubscribe_link"' in body
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.DRAFT


def _panes(body):
    """The preview pane's data (the JSON script the page's preview.js shows)."""
    start = body.index('<script id="sk-preview-data" type="application/json">')
    return json.loads(body[start:].split(">", 1)[1].split("</script>", 1)[0])


def test_campaign_preview_renders_a_chosen_contact_in_a_sandboxed_iframe(admin_client, campaign):
    url = reverse("admin:campaigns_campaign_preview", args=[campaign.pk])
    response = admin_client.get(url, {"contact": "r1@example.org"})
    assert response.status_code == 200
    body = response.content.decode()
    assert '<iframe sandbox=""' in body and 'data-mode="mobile"' in body
    # The HTML travels as JSON (escaped), never live in the admin page.
    assert "<script>parent.alert(1)</script>" not in body
    panes = _panes(body)
    assert "Hi Reader 1 from City1" in panes["html"]
    assert "Hello Reader" in body  # the subject
    assert "Hi Reader 1 from City1" in panes["text"]  # the text part
    # The raw source is the message as sent: headers and MIME parts.
    assert (
        "Message-ID:" in panes["source"]
        and "Content-Type: multipart/alternative" in panes["source"]
    )
    assert panes["clipped"] is False and panes["html_bytes"] < panes["clip_bytes"]
    headers = body.split('id="preview-headers"')[1]
    assert "List-Unsubscribe" in headers and "Message-ID" in headers
    assert "r1@example.org" in headers


def test_campaign_preview_marks_gmail_clipping_and_shows_images_off(admin_client, campaign):
    campaign.html = (
        '<p><img src="https://img.example/a.png" alt="Spring sale"></p>'
        + "<p>" + "x" * (105 * 1024) + "</p>"
        + '<a href="{{ unsubscribe_url }}">u</a>'
    )  # fmt: skip
    campaign.save()
    url = reverse("admin:campaigns_campaign_preview", args=[campaign.pk])
    panes = _panes(admin_client.get(url).content.decode())
    assert panes["clipped"] is True
    assert "Gmail clips the message here (102 KB)" in panes["html"]
    assert "https://img.example/a.png" in panes["html"]
    assert "https://img.example/a.png" not in panes["html_images_off"]
    assert 'alt="Spring sale"' in panes["html_images_off"]


def test_campaign_preview_by_id_and_random(admin_client, campaign):
    contact = campaign.lists.get().contacts.get(email="r2@example.org")
    url = reverse("admin:campaigns_campaign_preview", args=[campaign.pk])
    assert "City2" in admin_client.get(url, {"contact": str(contact.pk)}).content.decode()
    body = admin_client.get(url).content.decode()
    assert "Hi Reader" in html.unescape(body)
    body = admin_client.get(url, {"contact": "nobody@example.org"}, follow=True).content.decode()
    assert "No contact" in body


def test_template_preview_with_a_sample_contact(admin_client, campaign):
    template = Template.objects.create(
        name="T", subject="Hi {{ name }}", html="<p>{{ city | default('x') }} {{ email }}</p>"
    )
    url = reverse("admin:campaigns_template_preview", args=[template.pk])
    body = admin_client.get(url, {"contact": "r0@example.org"}).content.decode()
    assert "City0 r0@example.org" in html.unescape(body)
    assert "Hi Reader 0" in body


def test_send_test_shows_preflight_and_a_result_per_address(
    admin_client, campaign, smtp_server, settings
):
    settings.EDM_SMTP_URL = smtp_server.url
    settings.EDM_SMTP_TLS_CA_FILE = smtp_server.ca_file
    smtp_server.script("rcpt", "550 5.1.1 no such user", recipient="nobody@example.net")
    url = reverse("admin:campaigns_campaign_send_test", args=[campaign.pk])
    body = admin_client.get(url).content.decode()
    assert 'id="preflight"' in body
    response = admin_client.post(
        url, {"emails": "me@example.net, nobody@example.net", "contact": "r1@example.org"}
    )
    body = response.content.decode()
    results = body.split('id="test-results"')[1]
    assert "me@example.net</td><td>sent" in results
    assert "nobody@example.net</td><td>permanent" in results and "550" in results
    (message,) = smtp_server.messages
    assert list(message.rcpt_tos) == ["me@example.net"]
    from email import message_from_bytes
    from email.policy import default

    parsed = message_from_bytes(message.data, policy=default)
    assert parsed["Subject"] == "[Test] Hello Reader"
    assert "City1" in parsed.get_body(("html",)).get_content()
    assert parsed["To"].addresses[0].addr_spec == "me@example.net"
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.DRAFT and not campaign.deliveries.exists()


def test_pages_render_without_a_report(admin_client, campaign):
    assert admin_client.get(_change_url(campaign)).status_code == 200
    assert 'id="preflight"' not in admin_client.get(_change_url(campaign)).content.decode()
    assert admin_client.get(reverse("admin:campaigns_campaign_add")).status_code == 200
    assert admin_client.get(reverse("admin:campaigns_campaign_changelist")).status_code == 200


def test_pause_resume_cancel_buttons_change_the_status(admin_client, campaign, monkeypatch):
    from campaigns import tasks

    monkeypatch.setattr(tasks.campaign_send_batch, "delay", lambda *args: None)
    Campaign.objects.filter(pk=campaign.pk).update(status=CampaignStatus.SENDING)

    def press(name: str) -> str:
        url = reverse(f"admin:campaigns_campaign_{name}", args=[campaign.pk])
        return admin_client.get(url, follow=True).content.decode()

    assert "Paused" in press("pause")
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.PAUSED
    assert "cannot be paused" in html.unescape(press("pause"))
    assert "Resumed" in press("resume")
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.SENDING
    assert "Cancelled" in press("cancel")
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.CANCELLED


def test_schedule_button_needs_a_time_then_schedules(admin_client, campaign):
    from datetime import timedelta

    from django.utils import timezone

    url = reverse("admin:campaigns_campaign_schedule", args=[campaign.pk])
    assert "Set &#x27;Scheduled for&#x27;" in admin_client.get(url, follow=True).content.decode()
    campaign.scheduled_at = timezone.now() + timedelta(hours=2)
    campaign.save()
    body = admin_client.get(url, follow=True).content.decode()
    assert "Scheduled for" in body
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.SCHEDULED


def test_progress_json_reports_counts_for_the_live_widget(admin_client, campaign):
    from delivery.models import Delivery

    for i, contact in enumerate(campaign.lists.get().contacts.all()):
        Delivery.objects.create(
            campaign=campaign, contact=contact, email=contact.email,
            status="sent" if i else "deferred",
        )  # fmt: skip
    url = reverse("admin:campaigns_campaign_progress", args=[campaign.pk])
    report = admin_client.get(url).json()
    assert report["recipients"] == 3
    assert report["counts"]["sent"] == 2
    assert report["counts"]["deferred"] == 1
    assert report["done"] == 2
    page = admin_client.get(_change_url(campaign)).content.decode()
    assert f'data-progress-url="{url}"' in page
