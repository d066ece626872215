"""Open tracking per campaign: off, the messages that reach the SMTP server carry no pixel."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import default as default_policy

import pytest

from campaigns.sending.batch import campaign_send_batch
from campaigns.sending.dispatch import campaign_dispatch
from campaigns.services import campaign_send
from tests.factories import CampaignFactory, audience

HTML = (
    '<html><body><p>Hi {{ name }}</p><a href="https://shop.example.com/">Shop</a>'
    '<a href="{{ unsubscribe_url }}">Stop</a></body></html>'
)


@pytest.fixture
def send(settings, smtp_server, monkeypatch):
    settings.EDM_SMTP_URL = smtp_server.url
    settings.EDM_SMTP_TLS_CA_FILE = smtp_server.ca_file
    from campaigns import tasks

    monkeypatch.setattr(tasks.campaign_dispatch, "delay_on_commit", lambda *a: None)
    monkeypatch.setattr(tasks.campaign_send_batch, "delay", lambda *a: None)

    def sent_html(*, track_opens: bool, domain: str) -> list[str]:
        before = len(smtp_server.messages)
        campaign = CampaignFactory(
            lists=[audience(2, name=domain, domain=domain)], html=HTML, track_opens=track_opens
        )
        campaign_send(campaign_id=campaign.pk)
        campaign_dispatch(campaign_id=campaign.pk)
        campaign_send_batch(campaign_id=campaign.pk)
        return [
            message_from_bytes(wire.data, policy=default_policy)
            .get_body(preferencelist=("html",))
            .get_content()
            for wire in smtp_server.wait_for_messages(before + 2)[before:]
        ]

    return sent_html


@pytest.mark.django_db
def test_the_pixel_is_in_the_sent_messages_only_when_opens_are_tracked(send, settings):
    pixel = f'<img src="{settings.EDM_PUBLIC_URL}/o/'
    tracked = send(track_opens=True, domain="on.example")
    assert len(tracked) == 2 and all(pixel in html for html in tracked)
    untracked = send(track_opens=False, domain="off.example")
    assert len(untracked) == 2
    for html in untracked:
        assert "/o/" not in html and 'width="1" height="1"' not in html
        assert f"{settings.EDM_PUBLIC_URL}/c/" in html  # clicks are still tracked
