"""Campaign report: exact numbers on a small campaign, the page, the CSV, the dashboard."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from campaigns import reports
from campaigns.models import CampaignStatus
from campaigns.services import delivery_unsubscribe
from campaigns.tracking import tracking_record_hits, tracking_tail
from contacts.models import Contact
from delivery import tracking
from delivery.models import Delivery, DeliveryEvent, EventKind
from tests.factories import CampaignFactory, audience

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"


@pytest.fixture(autouse=True)
def _fresh_link_cache():
    # Row ids are reused after a test's rollback; production ids never are.
    from campaigns import tracking as tracking_services

    tracking_services._LINKS.clear()


@pytest.fixture
def campaign(db):
    """10 recipients: 7 delivered, 1 async bounce after a 250, 1 sync bounce, 1 failed."""
    campaign = CampaignFactory(
        html='<a href="https://a.example.org/x">A</a> <a href="https://b.example.org/y">B</a>',
        lists=[audience(8), audience(2, name="Other", domain="mail.test")],
        status=CampaignStatus.SENT,
    )
    sent_at = timezone.now() - timedelta(hours=2)
    statuses = ["sent"] * 7 + ["bounced", "bounced", "failed"]
    deliveries = []
    for contact, status in zip(Contact.objects.order_by("id"), statuses, strict=True):
        deliveries.append(
            Delivery.objects.create(
                campaign=campaign,
                contact=contact,
                email=contact.email,
                status=status,
                sent_at=sent_at if status == "sent" or contact.email.startswith("r7@") else None,
            )
        )
    events = [
        DeliveryEvent(delivery=d, kind=EventKind.SENT, created_at=sent_at)
        for d in deliveries
        if d.sent_at
    ]
    events.append(
        DeliveryEvent(
            delivery=deliveries[7],
            kind=EventKind.BOUNCED,
            created_at=sent_at + timedelta(minutes=5),
            data={"source": "bounce report"},
        )
    )
    events.append(DeliveryEvent(delivery=deliveries[8], kind=EventKind.BOUNCED, created_at=sent_at))
    events.append(
        DeliveryEvent(delivery=deliveries[0], kind=EventKind.COMPLAINT, created_at=sent_at)
    )
    DeliveryEvent.objects.bulk_create(events)
    return campaign, deliveries


def _links(campaign):
    from campaigns.tracking import campaign_links_register

    return campaign_links_register(campaign_id=campaign.pk, html=campaign.html)


def test_report_numbers_are_exact(campaign):
    campaign, d = campaign
    links = _links(campaign)
    link_a = links["https://a.example.org/x"]
    link_b = links["https://b.example.org/y"]
    now = timezone.now().timestamp()
    hits = [
        # three people open (one twice), one opens only through a proxy
        *(tracking.Hit("open", d[i].pk, now, BROWSER) for i in (0, 1, 2, 0)),
        tracking.Hit("open", d[3].pk, now, "Mozilla/5.0 (compatible) GoogleImageProxy"),
        # one person clicks A twice; a scanner follows both links of d[4] in a burst
        tracking.Hit("click", d[1].pk, now, BROWSER, link_id=link_a, campaign_id=campaign.pk),
        tracking.Hit("click", d[1].pk, now + 5, BROWSER, link_id=link_a, campaign_id=campaign.pk),
        *(
            tracking.Hit(
                "click", d[4].pk, now + i * 0.1, BROWSER, link_id=link, campaign_id=campaign.pk
            )
            for i, link in enumerate((link_a, link_b, link_a))
        ),
    ]
    assert tracking_record_hits(hits) == len(hits)
    delivery_unsubscribe(delivery_id=d[2].pk, source="one-click")
    tracking_tail(now=timezone.now() + timedelta(minutes=1))

    funnel = reports.campaign_funnel(campaign=campaign)
    got = {s.key: (s.human, s.machine) for s in funnel.steps}
    assert got == {
        "recipients": (10, None),
        "sent": (8, None),  # 7 delivered + 1 bounced after a 250
        "delivered": (7, None),
        "opened": (3, 1),
        "clicked": (1, 1),
        "bounced": (2, None),
        "complained": (1, None),
        "unsubscribed": (1, None),
    }
    assert funnel.by_key["opened"].rate == pytest.approx(3 / 7)
    assert funnel.by_key["bounced"].rate == pytest.approx(2 / 10)
    assert funnel.by_key["complained"].level == "danger"  # 1 of 7 is far over 0.3%

    domains = {r["domain"]: r for r in reports.campaign_domains(campaign_id=campaign.pk)}
    assert domains["example.com"]["sent"] == 8 and domains["example.com"]["opened"] == 3
    assert domains["example.com"]["bounced"] == 1 and domains["example.com"]["complaints"] == 1
    assert (domains["mail.test"]["sent"], domains["mail.test"]["bounced"]) == (0, 1)
    top = reports.campaign_top_links(campaign_id=campaign.pk)
    assert (top[0].url, top[0].clicks, top[0].unique_clicks, top[0].machine_clicks) == (
        "https://a.example.org/x",
        2,
        1,
        2,
    )
    minutes = reports.campaign_minutes(campaign_id=campaign.pk)
    assert sum(m.sent for m in minutes) == 8
    assert sum(m.opens for m in minutes) == 4 and sum(m.machine_opens for m in minutes) == 1


def test_the_tail_counts_each_event_once(campaign):
    campaign, _ = campaign
    later = timezone.now() + timedelta(minutes=1)
    tracking_tail(now=later)
    tracking_tail(now=later)
    assert reports.campaign_funnel(campaign=campaign).by_key["complained"].human == 1
    assert sum(m.sent for m in reports.campaign_minutes(campaign_id=campaign.pk)) == 8


def test_report_page_and_csv(admin_client, campaign):
    campaign, d = campaign
    tracking_record_hits([tracking.Hit("open", d[0].pk, timezone.now().timestamp(), BROWSER)])
    tracking_tail(now=timezone.now() + timedelta(minutes=1))
    page = admin_client.get(reverse("admin:campaigns_campaign_report", args=[campaign.pk]))
    assert page.status_code == 200
    body = page.content.decode()
    assert 'id="funnel"' in body and "<svg" in body and "example.com" in body
    assert reverse("admin:delivery_delivery_change", args=[d[0].pk]) in body

    response = admin_client.get(reverse("admin:campaigns_campaign_report_csv", args=[campaign.pk]))
    assert response.streaming
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == 10
    first = next(r for r in rows if r["delivery_id"] == str(d[0].pk))
    assert (first["status"], first["opens"], first["complained"]) == ("sent", "1", "yes")


def test_report_button_on_the_campaign_page(admin_client, campaign):
    campaign, _ = campaign
    url = reverse("admin:campaigns_campaign_change", args=[campaign.pk])
    assert "report-redirect" in admin_client.get(url).content.decode()


def test_dashboard_shows_funnels_growth_and_warnings(admin_client, campaign):
    campaign, _ = campaign
    tracking_tail(now=timezone.now() + timedelta(minutes=1))
    body = admin_client.get(reverse("admin:index")).content.decode()
    assert campaign.name in body
    assert "List growth" in body and "10 new contacts" in body
    assert "over the providers&#x27; limit" in body or "over the providers' limit" in body


def test_the_charts_of_a_campaign_with_nothing_sent_yet_render_empty():
    """No minute yet (a draft's report): an empty axis, not an IndexError on the labels."""
    from campaigns.reports import campaign_charts

    charts = campaign_charts(minutes=[])
    assert charts["sends"].startswith("<svg") and "<polyline" not in charts["sends"]
