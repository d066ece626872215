"""Send-path defects found in review, each fixed: these tests hold the fixes."""

from __future__ import annotations

import collections
import contextlib
import time

import pytest

from campaigns.models import CampaignStatus
from campaigns.sending import batch, claims, dispatch
from campaigns.sending.batch import campaign_send_batch
from campaigns.sending.dispatch import campaign_dispatch
from campaigns.services import campaign_cancel, campaign_resume, campaign_send, delivery_unsubscribe
from delivery.models import OPEN_STATUSES, Delivery, DeliveryStatus, SmtpServer
from delivery.ratelimit import is_slow_down
from tests.factories import CampaignFactory, ContactFactory, SubscriptionFactory, audience


def start(campaign):
    campaign_send(campaign_id=campaign.pk)
    campaign_dispatch(campaign_id=campaign.pk)


def statuses(campaign) -> dict[str, str]:
    return dict(Delivery.objects.filter(campaign=campaign).values_list("email", "status"))


# 1 -------------------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_rows_waiting_behind_the_rate_limit_are_not_sent_twice_when_their_lease_expires(
    smtp_settings, no_broker, settings, redis_client, monkeypatch
):
    """A chunk of EDM_BATCH_SIZE rows is claimed at once with one fixed lease; with a rate
    limit the chunk drains slower than the lease, the sweeper reclaims rows the live task is
    still going to send, and another task sends them too."""
    settings.EDM_LEASE_SECONDS = 1
    settings.EDM_FLUSH_SECONDS = 0.2  # leases of held rows are renewed at each flush
    settings.EDM_SMTP_RATE = 3  # messages per second, shared through Redis
    campaign = CampaignFactory(lists=[audience(8)])
    start(campaign)
    began = time.monotonic()
    real = batch.outcome_for_result
    swept = []

    def outcome_then_sweep(*args, **kwargs):
        if not swept and time.monotonic() - began > 1.3:
            swept.append(claims.deliveries_reclaim_expired())
            # What the sweeper enqueues next, run by another worker:
            campaign_send_batch(campaign_id=campaign.pk)
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "outcome_for_result", outcome_then_sweep)
    campaign_send_batch(campaign_id=campaign.pk)
    assert swept == [0]  # the sweeper ran, and took nothing from the working task
    per_recipient = collections.Counter(m.rcpt_tos[0] for m in smtp_settings.messages)
    assert max(per_recipient.values()) == 1, per_recipient


# 2 -------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_daily_quota_counts_messages_sent_not_rows_asked_for(
    smtp_settings, no_broker, settings, redis_client
):
    server = SmtpServer(
        name="quota",
        host=smtp_settings.host,
        port=smtp_settings.port,
        security="starttls",
        username="skylark",
        daily_quota=100,
    )
    server.set_password("secret")
    server.save()
    first = CampaignFactory(lists=[audience(5)])
    first.smtp_servers.add(server)
    start(first)
    campaign_send_batch(campaign_id=first.pk)
    assert set(statuses(first).values()) == {"sent"}
    second = CampaignFactory(lists=[audience(5, name="Other", domain="example.org")])
    second.smtp_servers.add(server)
    start(second)
    campaign_send_batch(campaign_id=second.pk)
    # 5 of 100 used: the second campaign's 5 fit easily. On main the first task took 500
    # (granted 100) and then another 500 for the empty second claim: the day is used up.
    assert set(statuses(second).values()) == {"sent"}


# 3 -------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_list_unsubscribe_is_honoured_by_a_campaign_already_dispatched(smtp_settings, no_broker):
    shared = audience(3)
    first = CampaignFactory(lists=[shared])
    second = CampaignFactory(lists=[shared])
    start(first)
    start(second)
    campaign_send_batch(campaign_id=first.pk)
    r0 = Delivery.objects.get(campaign=first, email="r0@example.com")
    assert delivery_unsubscribe(delivery_id=r0.pk, source="one-click")
    campaign_send_batch(campaign_id=second.pk)
    received = [m.rcpt_tos[0] for m in smtp_settings.messages]
    assert received.count("r0@example.com") == 1  # the first campaign only


# 4 -------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_resumed_campaign_is_not_paused_again_by_another_worker_process(
    smtp_settings, no_broker, settings, django_capture_on_commit_callbacks
):
    settings.EDM_PAUSE_SAMPLE = 4
    settings.EDM_PAUSE_ERROR_RATE = 0.5
    settings.EDM_FLUSH_SECONDS = 0
    settings.EDM_BATCH_SIZE = 2
    rule = smtp_settings.script("rcpt", "550 5.1.1 No such user", times=4)
    campaign = CampaignFactory(lists=[audience(20)])
    start(campaign)
    campaign_send_batch(campaign_id=campaign.pk)
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.PAUSED and rule.used == 4
    # The operator checked the list and resumes. Another prefork process (or this one after
    # a restart) has not judged this campaign yet:
    with django_capture_on_commit_callbacks(execute=True):
        campaign_resume(campaign_id=campaign.pk)
    dispatch.campaign_enqueue_open(campaign_id=campaign.pk)
    campaign_send_batch(campaign_id=campaign.pk)
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.SENT, campaign.status_reason


# 5 -------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_cancel_during_a_batch_leaves_no_open_rows(smtp_settings, no_broker, settings, monkeypatch):
    smtp_settings.script("rcpt", "451 4.3.0 Try again")
    campaign = CampaignFactory(lists=[audience(6)])
    start(campaign)
    real = batch.outcome_for_result
    cancelled = []

    def cancel_on_first(*args, **kwargs):
        if not cancelled:
            cancelled.append(campaign_cancel(campaign_id=campaign.pk))  # the operator clicks
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "outcome_for_result", cancel_on_first)
    campaign_send_batch(campaign_id=campaign.pk)
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.CANCELLED
    left_open = [s for s in statuses(campaign).values() if s in OPEN_STATUSES]
    assert left_open == [], statuses(campaign)


# 6 -------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_one_poisoned_outcome_does_not_strand_the_chunk_in_sending(
    smtp_settings, no_broker, settings
):
    """A row with many attempts (EDM_RETRY_MAX_SECONDS small, long lifetime) overflows
    RetryPolicy.delay (2.0 ** 1024); the exception escapes campaign_send_batch, which has
    no clean-up: its whole chunk stays `sending` until the lease, then repeats forever."""
    settings.EDM_RETRY_MAX_SECONDS = 60
    smtp_settings.script("rcpt", "451 4.3.0 Try again")
    campaign = CampaignFactory(lists=[audience(5)])
    start(campaign)
    Delivery.objects.filter(campaign=campaign, email="r0@example.com").update(attempts=1100)
    with contextlib.suppress(OverflowError):  # raised on main
        campaign_send_batch(campaign_id=campaign.pk)
    assert DeliveryStatus.SENDING not in statuses(campaign).values()


# 7 -------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_idn_domain_recipient_is_sent_without_smtputf8(smtp_server_factory, settings, no_broker):
    server = smtp_server_factory(smtputf8=False)
    settings.EDM_SMTP_URL = server.url
    settings.EDM_SMTP_TLS_CA_FILE = server.ca_file
    target = audience(1)
    SubscriptionFactory(
        contact=ContactFactory(email="anna@bücher.example", name="Anna"), contact_list=target
    )
    campaign = CampaignFactory(lists=[target])
    start(campaign)
    campaign_send_batch(campaign_id=campaign.pk)
    # RFC 5890/6531: an IDN domain goes as its A-label; only a non-ASCII local part needs
    # SMTPUTF8. The To: header already uses the A-label; the envelope does not.
    assert statuses(campaign)["anna@bücher.example"] == "sent", Delivery.objects.get(
        email="anna@bücher.example"
    ).smtp_reply
    assert "anna@xn--bcher-kva.example" in [m.rcpt_tos[0] for m in server.messages]


# 8 -------------------------------------------------------------------------------------------
def test_greylisting_is_not_a_request_to_slow_the_whole_server_down():
    # Postfix postgrey's stock reply; it is about one recipient domain, not our rate.
    assert not is_slow_down(450, "4.2.0 Recipient address rejected: Greylisted, try again later")


# 9 -------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_suppressions_and_bounces_since_the_dispatch_are_honoured_at_send_time(
    smtp_settings, no_broker
):
    """Checked again when each chunk is claimed (on PostgreSQL inside the claim itself): an
    address suppressed, a whole domain suppressed (in another case), and a contact marked
    bounced after the dispatch get nothing and end suppressed, with an event."""
    from contacts.models import Contact, ContactStatus, Suppression
    from delivery.models import DeliveryEvent

    shared = audience(3)
    other = audience(2, name="Other", domain="Blocked.Example")
    SubscriptionFactory(contact=ContactFactory(email="bounced@example.com"), contact_list=shared)
    campaign = CampaignFactory(lists=[shared, other])
    start(campaign)
    Suppression.objects.create(value="r1@example.com", scope="address", reason="manual")
    Suppression.objects.create(value="blocked.example", scope="domain", reason="manual")
    Contact.objects.filter(email="bounced@example.com").update(status=ContactStatus.BOUNCED)
    campaign_send_batch(campaign_id=campaign.pk)
    received = sorted(m.rcpt_tos[0] for m in smtp_settings.messages)
    assert received == ["r0@example.com", "r2@example.com"]
    assert statuses(campaign) == {
        "r0@example.com": DeliveryStatus.SENT,
        "r1@example.com": DeliveryStatus.SUPPRESSED,
        "r2@example.com": DeliveryStatus.SENT,
        "r0@Blocked.Example": DeliveryStatus.SUPPRESSED,
        "r1@Blocked.Example": DeliveryStatus.SUPPRESSED,
        "bounced@example.com": DeliveryStatus.SUPPRESSED,
    }
    assert DeliveryEvent.objects.filter(delivery__campaign=campaign, kind="suppressed").count() == 4


@pytest.mark.django_db
def test_the_claim_takes_nothing_once_the_campaign_is_paused(smtp_settings, no_broker):
    from campaigns.services import campaign_pause

    campaign = CampaignFactory(lists=[audience(2)])
    start(campaign)
    campaign_pause(campaign_id=campaign.pk)
    assert not claims.deliveries_claim(campaign_id=campaign.pk, limit=10, only_if_sending=True)
    assert set(statuses(campaign).values()) == {DeliveryStatus.PENDING}
    claimed = claims.deliveries_claim(campaign_id=campaign.pk, limit=10)
    assert len(claimed) == 2  # without the condition
