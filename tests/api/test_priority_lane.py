"""The priority lane: a transactional message overtakes a running campaign.

Two real workers: one on the campaign queue, one on EDM_PRIORITY_QUEUE, both against one
scripted SMTP server slowed down so that the campaign takes several seconds.
"""

from __future__ import annotations

import json
import time

import pytest

from api import services
from api.models import Scope, TransactionalMessage
from campaigns.models import CampaignStatus
from campaigns.services import campaign_create, campaign_send
from delivery.models import Delivery
from tests.factories import audience
from tests.worker import wait_until

pytestmark = pytest.mark.slow


def test_transactional_message_arrives_while_the_campaign_is_still_sending(
    transactional_db, smtp_server, celery_worker_factory, redis_client, client, settings
):
    audience(300, name="Big")
    campaign = campaign_create(
        name="Big",
        list_names=["Big"],
        subject="News",
        html='<p>Hi {{ name }}</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>',
        from_email="news@skylark.test",
    )
    smtp_server.script("data", stall=0.05)  # ~300 * 0.05 / pool 4: several seconds of sending
    env = {"EDM_SMTP_URL": smtp_server.url, "EDM_SMTP_TLS_CA_FILE": smtp_server.ca_file}
    celery_worker_factory(**env)
    celery_worker_factory(queues=settings.EDM_PRIORITY_QUEUE, beat=False, **env)
    _, secret = services.api_key_create(application="shop", scopes=[Scope.MESSAGES_SEND])

    campaign_send(campaign_id=campaign.pk)
    smtp_server.wait_for_messages(20, timeout=60)  # the campaign is on the wire

    started = time.monotonic()
    response = client.post(
        "/api/v1/messages",
        json.dumps({"to": "vip@example.org", "subject": "Your code", "text": "123456"}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert response.status_code == 202

    def arrived() -> bool:
        return any("vip@example.org" in m.rcpt_tos for m in smtp_server.messages)

    wait_until(arrived, timeout=30, interval=0.02, what="the transactional message")
    latency = time.monotonic() - started
    campaign_open = Delivery.objects.filter(
        campaign=campaign, status__in=["pending", "sending"]
    ).count()
    campaign_received = sum(1 for m in smtp_server.messages if "vip@example.org" not in m.rcpt_tos)
    assert campaign_open > 0, "the campaign finished first: the test proves nothing"
    assert campaign_received < 300
    assert latency < 5, f"took {latency:.2f}s"
    message = TransactionalMessage.objects.get(public_id=response.json()["id"])
    wait_until(lambda: Delivery.objects.get(pk=message.delivery_id).status == "sent", timeout=10)

    wait_until(
        lambda: campaign.__class__.objects.get(pk=campaign.pk).status == CampaignStatus.SENT,
        timeout=120,
        what="the campaign to finish",
    )
