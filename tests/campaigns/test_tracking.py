"""Open pixel, click redirect, web view, machine heuristics and the bulk flush."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from unittest import mock

import pytest
from django.conf import settings
from django.core import signing
from django.utils import timezone

from campaigns import tracking as tracking_services
from campaigns.models import CampaignLink, CampaignMinute, CampaignStats, Engagement
from campaigns.sending.claims import ClaimedDelivery
from campaigns.sending.prepare import campaign_prepare
from delivery import tracking
from delivery.models import Delivery, DeliveryEvent, DeliveryStatus, EventKind
from mailkit.render import render_content
from tests.factories import CampaignFactory, audience

HTML = """<html><body>
<p>Hi {{ name }}</p>
<a href="https://shop.example.com/spring?a=1&amp;b=2">Shop</a>
<a href='http://blog.example.com/post'>Blog</a>
<a href="https://shop.example.com/spring?a=1&amp;b=2">Shop again</a>
<a href="https://example.com/u/{{ email }}">Personal</a>
<a href="mailto:help@example.com">Mail us</a>
<a href="{{ webview_url }}">View in browser</a>
<a href="{{ unsubscribe_url }}">Unsubscribe</a>
</body></html>"""

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"


# --- pure --------------------------------------------------------------------------------------


def test_find_links_keeps_http_links_once_and_skips_personalized_mailto_and_excluded():
    links = tracking.find_links(HTML, exclude=["http://blog.example.com/post"])
    assert links == ["https://shop.example.com/spring?a=1&b=2"]


def test_instrument_rewrites_registered_links_and_puts_the_pixel_before_body_end():
    out = tracking.instrument_html(
        HTML, link_tokens={"https://shop.example.com/spring?a=1&b=2": "TOKEN"}
    )
    assert out.count('href="{{ click_base }}TOKEN/"') == 2
    assert "href='http://blog.example.com/post'" in out  # not registered: untouched
    assert 'href="https://example.com/u/{{ email }}"' in out
    assert out.index("open_pixel_url") < out.index("</body>")


def test_tokens_are_per_purpose_and_tamper_proof():
    open_token = tracking.recipient_token("open", 42)
    assert tracking.read_recipient_token("open", open_token, max_age_seconds=60) == 42
    assert tracking.read_recipient_token("webview", open_token, max_age_seconds=60) is None
    value, _, signature = open_token.rpartition(":")
    assert (
        tracking.read_recipient_token("open", f"43{value[2:]}:{signature}", max_age_seconds=60)
        is None
    )
    assert tracking.read_recipient_token("open", "42:abc", max_age_seconds=60) is None
    assert tracking.read_link_token(tracking.link_token(1, 2)) == (1, 2)
    assert tracking.read_link_token(tracking.link_token(1, 2).replace("1.2", "1.3")) is None


def test_expired_tokens_are_refused():
    with mock.patch("django.core.signing.time.time", return_value=time.time() - 3600):
        token = tracking.recipient_token("open", 7)
        click = tracking.click_token(7, 1)
    assert tracking.read_recipient_token("open", token, max_age_seconds=60) is None
    assert tracking.read_click_token(click, max_age_seconds=60) is None
    assert tracking.read_recipient_token("open", token, max_age_seconds=7200) == 7


def _hit(kind="click", delivery_id=1, at=1000.0, agent=BROWSER, link_id=1, method="GET"):
    return tracking.Hit(
        kind=kind, delivery_id=delivery_id, at=at, user_agent=agent, method=method, link_id=link_id
    )


@pytest.mark.parametrize(
    ("hit", "sent_at", "machine"),
    [
        (_hit(at=1005.0), 1000.0, True),  # click 5 s after delivery
        (_hit(at=1060.0), 1000.0, False),
        (_hit(agent="Mozilla/5.0 (Windows NT 5.1) GoogleImageProxy", kind="open"), 0, True),
        (_hit(agent="Barracuda Sentinel (EE)"), 0, True),
        (_hit(agent=""), 0, True),
        (_hit(method="HEAD"), 0, True),
        (_hit(kind="open", agent="Mozilla/5.0", at=1003.0), 1000.0, True),  # Apple MPP
        (_hit(kind="open", agent="Mozilla/5.0", at=5000.0), 1000.0, False),
        (_hit(kind="open", at=1001.0), 1000.0, False),  # a person opening at once is fine
    ],
)
def test_machine_heuristics(hit, sent_at, machine):
    reasons = tracking.classify_hits([hit], sent_at={hit.delivery_id: sent_at})
    assert bool(reasons[0]) is machine


def test_many_links_within_a_second_are_all_machine():
    hits = [_hit(at=2000.0 + i * 0.2, link_id=i) for i in range(4)] + [_hit(at=2100.0, link_id=9)]
    reasons = tracking.classify_hits(hits, sent_at={1: 1000.0})
    assert [bool(r) for r in reasons] == [True, True, True, True, False]


# --- endpoints ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_link_cache():
    # Row ids are reused after a test's rollback; production ids never are.
    from campaigns import tracking as tracking_services

    tracking_services._LINKS.clear()


@pytest.fixture
def sent_campaign(db, redis_client):
    campaign = CampaignFactory(html=HTML, lists=[audience(3)])
    from contacts.models import Contact

    sent_at = timezone.now() - timedelta(hours=1)
    deliveries = [
        Delivery.objects.create(
            campaign=campaign,
            contact=contact,
            email=contact.email,
            status=DeliveryStatus.SENT,
            sent_at=sent_at,
        )
        for contact in Contact.objects.order_by("email")
    ]
    return campaign, deliveries


def _rendered(campaign, delivery) -> str:
    prepared = campaign_prepare(campaign)
    row = ClaimedDelivery(
        id=delivery.pk,
        contact_id=delivery.contact_id,
        email=delivery.email,
        name=delivery.contact.name,
        attributes={},
        attempts=0,
        first_attempt_at=None,
    )
    return render_content(prepared.compiled, prepared.recipient_context(row)).html


def _path(url: str) -> str:
    return url.removeprefix(settings.EDM_PUBLIC_URL)


def test_prepare_registers_links_once_and_the_message_carries_tracking_urls(sent_campaign):
    campaign, deliveries = sent_campaign
    html = _rendered(campaign, deliveries[0])
    campaign_prepare.__globals__["_PREPARED"].clear()
    _rendered(campaign, deliveries[0])
    assert list(CampaignLink.objects.filter(campaign=campaign).values_list("url", flat=True)) == [
        "https://shop.example.com/spring?a=1&b=2",
        "http://blog.example.com/post",
    ]
    assert len(re.findall(r'href="[^"]*/c/[^"]+/[^"]+/"', html)) == 2
    assert "href='" + settings.EDM_PUBLIC_URL + "/c/" in html
    assert re.search(r'<img src="[^"]*/o/[^"]+\.gif"', html)
    assert "/v/" in html and "/u/" in html
    assert "https://example.com/u/" in html  # personalized: left untracked


def test_click_redirects_only_to_registered_links(client, sent_campaign):
    campaign, deliveries = sent_campaign
    html = _rendered(campaign, deliveries[0])
    click = re.search(r'href="([^"]*/c/[^"]+)"', html).group(1)
    response = client.get(_path(click), HTTP_USER_AGENT=BROWSER)
    assert response.status_code == 302
    assert response["Location"] == "https://shop.example.com/spring?a=1&b=2"

    token, link = _path(click).strip("/").split("/")[1:3]
    other = CampaignFactory(html='<a href="https://evil.example.net/">x</a>')
    foreign = CampaignLink.objects.create(
        campaign=other, url="https://evil.example.net/", url_hash="x"
    )
    forged_links = [
        tracking.link_token(other.pk, foreign.pk),  # a real link of another campaign
        tracking.link_token(campaign.pk, foreign.pk),  # signed, but not this campaign's link
        tracking.link_token(campaign.pk, 999999),  # unknown link id
        link[:-2] + ("AA" if not link.endswith("AA") else "BB"),  # tampered
        signing.Signer(salt="wrong").sign(f"{campaign.pk}.{foreign.pk}"),
    ]
    for forged in forged_links:
        assert client.get(f"/c/{token}/{forged}/").status_code == 404
    assert client.get(f"/c/{token[:-3]}xyz/{link}/").status_code == 404
    assert (
        client.get(f"/c/{tracking.recipient_token('open', deliveries[0].pk)}/{link}/").status_code
        == 404
    )


def test_open_pixel_is_an_uncached_gif_and_forged_tokens_are_404(
    client, sent_campaign, redis_client
):
    campaign, deliveries = sent_campaign
    token = tracking.recipient_token("open", deliveries[0].pk)
    response = client.get(f"/o/{token}.gif", HTTP_USER_AGENT=BROWSER)
    assert response.status_code == 200
    assert response["Content-Type"] == "image/gif"
    assert response.content.startswith(b"GIF89a")
    assert "no-store" in response["Cache-Control"]
    for bad in (token[:-1] + "x", tracking.recipient_token("webview", deliveries[0].pk), "1:abc"):
        assert client.get(f"/o/{bad}.gif").status_code == 404
    assert redis_client.llen(tracking_services.BUFFER_KEY) == 1


def test_hits_are_buffered_then_flushed_in_bulk_with_exact_counters(
    client, sent_campaign, redis_client
):
    campaign, deliveries = sent_campaign
    first, second, third = deliveries
    for delivery in deliveries:
        client.get(_path(_pixel(campaign, delivery)), HTTP_USER_AGENT=BROWSER)
    client.get(_path(_pixel(campaign, first)), HTTP_USER_AGENT=BROWSER)  # second open
    client.get(_path(_pixel(campaign, second)), HTTP_USER_AGENT="GoogleImageProxy")
    client.head(_path(_pixel(campaign, third)))
    html = _rendered(campaign, first)
    click = re.search(r'href="([^"]*/c/[^"]+)"', html).group(1)
    client.get(_path(click), HTTP_USER_AGENT=BROWSER)
    client.get(_path(click), HTTP_USER_AGENT=BROWSER)
    assert DeliveryEvent.objects.filter(kind__in=["open", "click"]).count() == 0  # buffered

    assert tracking_services.tracking_flush() == 8
    assert redis_client.llen(tracking_services.BUFFER_KEY) == 0
    stats = CampaignStats.objects.get(campaign=campaign)
    assert (stats.opens, stats.unique_opens, stats.machine_opens) == (4, 3, 2)
    assert (stats.clicks, stats.unique_clicks, stats.machine_clicks) == (2, 1, 0)
    link = CampaignLink.objects.get(campaign=campaign, position=0)
    assert (link.clicks, link.unique_clicks) == (2, 1)
    assert Engagement.objects.get(delivery=first).opens == 2
    assert DeliveryEvent.objects.filter(kind=EventKind.OPEN, data__machine=True).count() == 2
    minute = CampaignMinute.objects.get(campaign=campaign)
    assert (minute.opens, minute.machine_opens, minute.clicks) == (4, 2, 2)
    assert tracking_services.tracking_flush() == 0


def test_a_batch_left_by_a_crash_is_written_on_the_next_flush(sent_campaign, redis_client):
    campaign, deliveries = sent_campaign
    hit = tracking.Hit(
        kind="open", delivery_id=deliveries[0].pk, at=time.time(), user_agent=BROWSER
    )
    tracking_services.tracking_hit_push(hit)
    # A flusher took the batch and died before its transaction committed.
    redis_client.lmove(tracking_services.BUFFER_KEY, tracking_services.PROCESSING_KEY)
    assert tracking_services.tracking_flush() == 1
    assert CampaignStats.objects.get(campaign=campaign).unique_opens == 1
    assert not redis_client.exists(tracking_services.PROCESSING_KEY)


def test_hits_are_written_at_once_when_redis_is_unreachable(sent_campaign):
    import redis

    campaign, deliveries = sent_campaign
    hit = tracking.Hit(
        kind="open", delivery_id=deliveries[0].pk, at=time.time(), user_agent=BROWSER
    )
    with mock.patch.object(tracking_services, "get_redis") as broken:
        broken.return_value.rpush.side_effect = redis.ConnectionError("down")
        tracking_services.tracking_hit_push(hit)
    assert CampaignStats.objects.get(campaign=campaign).opens == 1


def _pixel(campaign, delivery) -> str:
    return f"{settings.EDM_PUBLIC_URL}/o/{tracking.recipient_token('open', delivery.pk)}.gif"


def test_web_view_renders_the_recipients_message_without_a_pixel(client, sent_campaign):
    campaign, deliveries = sent_campaign
    delivery = deliveries[1]
    token = tracking.recipient_token("webview", delivery.pk)
    response = client.get(f"/v/{token}/")
    assert response.status_code == 200
    body = response.content.decode()
    assert f"Hi {delivery.contact.name}" in body
    assert f"https://example.com/u/{delivery.email}" in body
    assert "/o/" not in body
    assert "script-src 'none'" in response["Content-Security-Policy"]
    assert client.get(f"/v/{token[:-2]}zz/").status_code == 404
    assert client.get(f"/v/{tracking.recipient_token('open', delivery.pk)}/").status_code == 404
