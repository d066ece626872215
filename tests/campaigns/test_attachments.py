"""Campaign attachments and inline images: sent with every message, checked before sending."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import default as default_policy
from email.policy import strict as strict_policy

import pytest
from django.core.files.base import ContentFile

from campaigns.models import CampaignAttachment
from campaigns.preflight import campaign_preflight
from campaigns.sending.batch import campaign_send_batch
from campaigns.sending.dispatch import campaign_dispatch
from campaigns.services import campaign_send
from tests.factories import CampaignFactory, audience

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


@pytest.fixture
def campaign(settings, smtp_server, tmp_path, monkeypatch):
    settings.EDM_SMTP_URL = smtp_server.url
    settings.EDM_SMTP_TLS_CA_FILE = smtp_server.ca_file
    settings.MEDIA_ROOT = tmp_path
    from campaigns import tasks

    monkeypatch.setattr(tasks.campaign_dispatch, "delay_on_commit", lambda *a: None)
    monkeypatch.setattr(tasks.campaign_send_batch, "delay", lambda *a: None)
    campaign = CampaignFactory(
        lists=[audience(2)],
        html='<p>Hi {{ name }}</p><img src="cid:logo"><a href="{{ unsubscribe_url }}">Stop</a>',
    )
    CampaignAttachment.objects.create(
        campaign=campaign, file=ContentFile(PNG, name="logo.png"), content_id="logo"
    )
    CampaignAttachment.objects.create(
        campaign=campaign,
        file=ContentFile("Prix: 12 €\n".encode(), name="tarifs.txt"),
        filename="Tarifs été 2026.txt",
    )
    return campaign


@pytest.mark.django_db
def test_every_message_carries_the_inline_image_and_the_file(campaign, smtp_server):
    campaign_send(campaign_id=campaign.pk)
    campaign_dispatch(campaign_id=campaign.pk)
    campaign_send_batch(campaign_id=campaign.pk)
    messages = smtp_server.wait_for_messages(2)
    for wire in messages:
        assert not message_from_bytes(wire.data, policy=strict_policy).defects
        message = message_from_bytes(wire.data, policy=default_policy)
        assert message.get_content_type() == "multipart/mixed"
        related = next(p for p in message.walk() if p.get_content_type() == "multipart/related")
        image = next(p for p in related.walk() if p.get_content_type() == "image/png")
        assert image["Content-ID"] == "<logo>"
        assert image.get_content() == PNG
        files = [p for p in message.iter_attachments() if p.get_content_type() == "text/plain"]
        assert [f.get_filename() for f in files] == ["Tarifs été 2026.txt"]
        assert files[0].get_content() == "Prix: 12 €\n"


@pytest.mark.django_db
def test_preflight_stops_an_inline_image_nobody_attached(campaign):
    campaign.html += '<img src="cid:banner">'
    campaign.save()
    report = campaign_preflight(campaign)
    assert "cid_missing" in [f.code for f in report.errors]
    assert "banner" in next(f.message for f in report.errors if f.code == "cid_missing")
