"""Server routes: weights, the default servers, and resting a server that keeps failing."""

from __future__ import annotations

import pytest

from delivery.health import is_rested, record_result
from delivery.models import SmtpServer
from delivery.selectors import choose_route, routes_for
from mailkit.smtp import SendResult, SendStatus

pytestmark = pytest.mark.django_db


def server(name: str, **fields) -> SmtpServer:
    fields.setdefault("security", "none")
    return SmtpServer.objects.create(name=name, host="127.0.0.1", port=2525, **fields)


def failure(stage: str = "connect") -> SendResult:
    return SendResult(
        tag=1, status=SendStatus.TEMPORARY, code=421, enhanced="", text="down", stage=stage
    )


def test_no_server_named_uses_the_default_servers_or_the_url(settings):
    settings.EDM_SMTP_URL = "smtp://127.0.0.1:2626?security=none"
    assert [r.key for r in routes_for([])] == ["server:default"]
    assert routes_for([])[0].config.port == 2626
    a = server("a", is_default=True)
    server("b")  # not a default: used only by campaigns that name it
    assert [r.key for r in routes_for([])] == [f"server:{a.pk}"]


def test_traffic_is_split_by_weight(redis_client):
    heavy, light = server("heavy", weight=9), server("light", weight=1)
    routes = routes_for([heavy, light])
    picks = [choose_route(routes).key for _ in range(2000)]
    share = picks.count(f"server:{heavy.pk}") / len(picks)
    assert 0.85 < share < 0.95


def test_a_server_that_keeps_failing_is_rested_and_traffic_moves(settings, redis_client):
    settings.EDM_SERVER_FAILURES = 3
    bad, good = server("bad"), server("good")
    routes = routes_for([bad, good])
    for _ in range(2):
        record_result(f"server:{bad.pk}", failure())
    assert not is_rested(f"server:{bad.pk}")
    record_result(f"server:{bad.pk}", failure("timeout"))
    assert is_rested(f"server:{bad.pk}")
    assert {choose_route(routes).key for _ in range(50)} == {f"server:{good.pk}"}


def test_recipient_refusals_and_successes_do_not_rest_a_server(settings, redis_client):
    settings.EDM_SERVER_FAILURES = 2
    s = server("s")
    key = f"server:{s.pk}"
    record_result(key, failure())
    record_result(key, SendResult(1, SendStatus.SENT, 250, "2.0.0", "ok", "data"))
    record_result(key, failure())
    refused = SendResult(1, SendStatus.TEMPORARY, 450, "4.2.0", "busy", "rcpt")
    record_result(key, refused)
    record_result(key, refused)
    assert not is_rested(key)


def test_when_every_server_rests_one_is_still_chosen(settings, redis_client):
    settings.EDM_SERVER_FAILURES = 1
    only = server("only")
    record_result(f"server:{only.pk}", failure())
    assert choose_route(routes_for([only])).key == f"server:{only.pk}"


def test_daily_quota_grants_only_what_is_left(redis_client):
    from delivery.health import quota_take

    assert quota_take("server:q", wanted=400, daily_quota=1000) == 400
    assert quota_take("server:q", wanted=500, daily_quota=1000) == 500
    assert quota_take("server:q", wanted=500, daily_quota=1000) == 100
    assert quota_take("server:q", wanted=500, daily_quota=1000) == 0
    assert quota_take("server:q", wanted=500, daily_quota=0) == 500  # unlimited


@pytest.mark.django_db
def test_a_campaign_stops_at_the_servers_daily_quota(smtp_server, settings, redis_client):
    from campaigns.models import CampaignStatus
    from campaigns.sending.batch import campaign_send_batch
    from campaigns.sending.dispatch import campaign_dispatch
    from delivery.models import Delivery
    from tests.factories import CampaignFactory, audience

    settings.EDM_BATCH_SIZE = 2
    settings.EDM_SMTP_TLS_CA_FILE = smtp_server.ca_file
    limited = SmtpServer.objects.create(
        name="limited", host=smtp_server.host, port=smtp_server.port, security="starttls",
        username="skylark", daily_quota=3,
    )  # fmt: skip
    limited.set_password("secret")
    limited.save()
    campaign = CampaignFactory(lists=[audience(6)], status=CampaignStatus.SENDING)
    campaign.smtp_servers.set([limited])
    from campaigns import tasks

    tasks.campaign_send_batch.delay = lambda *args: None  # drive batches by hand
    try:
        campaign_dispatch(campaign_id=campaign.pk)
        campaign_send_batch(campaign_id=campaign.pk)
    finally:
        del tasks.campaign_send_batch.delay
    statuses = sorted(Delivery.objects.filter(campaign=campaign).values_list("status", flat=True))
    assert statuses == ["pending"] * 3 + ["sent"] * 3
    assert len(smtp_server.messages) == 3


def test_a_server_the_monitor_finds_down_gets_no_traffic(redis_client):
    from django.utils import timezone

    from delivery.monitor.models import SmtpCheck

    down, up = server("down"), server("up")
    SmtpCheck.objects.create(
        server=down, target="127.0.0.1:2525 (none)", checked_at=timezone.now(), health="down",
        up=False, error="connection refused",
    )  # fmt: skip
    routes = routes_for([down, up])
    assert {choose_route(routes).key for _ in range(30)} == {f"server:{up.pk}"}
