"""Range leases: a batch task holds its range of deliveries with one lease row and reads
them a chunk at a time, with no write per row before the send; the sweeper takes a dead
task's lease back."""

from __future__ import annotations

import collections
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from campaigns import services as campaign_services
from campaigns.models import CampaignStatus
from campaigns.sending import batch, claims
from campaigns.sending.batch import campaign_send_batch
from campaigns.sending.dispatch import campaign_dispatch
from campaigns.services import campaign_cancel, campaign_send
from delivery import services as delivery_services
from delivery.journal import journal_acceptances, journal_drain
from delivery.models import Delivery, DeliveryEvent, DeliveryLease, DeliveryStatus, EventKind
from mailkit.outcomes import Outcome
from tests.factories import CampaignFactory, audience


def started(size: int, no_broker) -> tuple:
    """A sending campaign of `size` recipients, dispatched: (campaign, its one batch range)."""
    campaign = CampaignFactory(lists=[audience(size)])
    campaign_send(campaign_id=campaign.pk)
    campaign_dispatch(campaign_id=campaign.pk)
    batches = [args for name, args in no_broker if name == "campaign_send_batch"]
    assert len(batches) == 1
    _, id_from, id_to = batches[0]
    return campaign, id_from, id_to


def rows(campaign) -> list[tuple[int, str, int]]:
    return list(
        Delivery.objects.filter(campaign=campaign)
        .order_by("id")
        .values_list("id", "status", "attempts")
    )


def expire(lease: DeliveryLease) -> None:
    DeliveryLease.objects.filter(pk=lease.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )


@pytest.mark.django_db(transaction=True)
def test_a_batch_sends_its_range_under_one_lease_without_writing_rows_before_the_send(
    smtp_settings, no_broker, monkeypatch
):
    campaign, id_from, id_to = started(6, no_broker)
    seen = []
    real = batch.outcome_for_result

    def look(*args, **kwargs):  # while the task sends: what the database holds
        seen.append(
            (
                set(Delivery.objects.filter(campaign=campaign).values_list("status", flat=True)),
                list(DeliveryLease.objects.values_list("campaign_id", "id_from", "id_to")),
            )
        )
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "outcome_for_result", look)
    assert campaign_send_batch(campaign_id=campaign.pk, id_from=id_from, id_to=id_to) == 6
    assert len(seen) == 6
    for statuses, leases in seen:
        assert DeliveryStatus.SENDING not in statuses  # no row was claimed one by one
        assert leases == [(campaign.pk, id_from, id_to)]
    assert DeliveryLease.objects.count() == 0  # ended with the task
    assert {status for _, status, _ in rows(campaign)} == {"sent"}
    assert all(attempts == 1 for _, _, attempts in rows(campaign))
    recipients = collections.Counter(m.rcpt_tos[0] for m in smtp_settings.messages)
    assert sorted(recipients) == [f"r{i}@example.com" for i in range(6)]
    assert set(recipients.values()) == {1}
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.SENT


@pytest.mark.django_db(transaction=True)
def test_a_dead_tasks_lease_is_taken_back_and_only_the_rows_it_read_count_an_attempt(
    smtp_settings, no_broker
):
    campaign, id_from, id_to = started(8, no_broker)
    lease = claims.deliveries_lease(
        campaign_id=campaign.pk, id_from=id_from, id_to=id_to, holder="dead-task"
    )
    read = claims.deliveries_read(lease=lease, after=id_from - 1, limit=3)
    assert [row.id for row in read] == [row_id for row_id, _, _ in rows(campaign)[:3]]
    lease.refresh_from_db()
    assert lease.read_to == read[-1].id
    # The task dies. Until its lease expires, the sweeper leaves it alone.
    assert claims.deliveries_reclaim_expired() == 0
    assert DeliveryLease.objects.filter(pk=lease.pk).exists()
    expire(lease)
    assert claims.deliveries_reclaim_expired() == 3
    assert not DeliveryLease.objects.exists()
    after = rows(campaign)
    assert [(status, attempts) for _, status, attempts in after[:3]] == [("deferred", 1)] * 3
    assert [(status, attempts) for _, status, attempts in after[3:]] == [("pending", 0)] * 5
    reclaimed = DeliveryEvent.objects.filter(kind=EventKind.RECLAIMED)
    assert sorted(reclaimed.values_list("delivery_id", flat=True)) == [r.id for r in read]
    # Sent again, everyone once (the reclaimed rows are due now).
    campaign_send_batch(campaign_id=campaign.pk, id_from=id_from, id_to=id_to)
    assert {status for _, status, _ in rows(campaign)} == {"sent"}
    assert sorted(m.rcpt_tos[0] for m in smtp_settings.messages) == sorted(
        f"r{i}@example.com" for i in range(8)
    )


@pytest.mark.django_db(transaction=True)
def test_the_same_task_delivered_again_takes_its_own_lease_over_at_once(no_broker):
    campaign, id_from, id_to = started(5, no_broker)
    first = claims.deliveries_lease(
        campaign_id=campaign.pk, id_from=id_from, id_to=id_to, holder="task-1"
    )
    claims.deliveries_read(lease=first, after=id_from - 1, limit=2)
    # Another task's live lease on the range: refused.
    assert (
        claims.deliveries_lease(
            campaign_id=campaign.pk, id_from=id_from + 1, id_to=id_to + 5, holder="task-2"
        )
        is None
    )
    # The same task again (its worker died, the broker delivered it anew): taken over.
    again = claims.deliveries_lease(
        campaign_id=campaign.pk, id_from=id_from, id_to=id_to, holder="task-1"
    )
    assert again is not None and again.pk != first.pk
    assert list(DeliveryLease.objects.values_list("pk", flat=True)) == [again.pk]
    assert [(s, a) for _, s, a in rows(campaign)] == [("deferred", 1)] * 2 + [("pending", 0)] * 3
    # The old lease is gone: what the dead run would still read is nothing.
    assert claims.deliveries_read(lease=first, after=id_from - 1, limit=10) == []
    assert claims.deliveries_lease_renew(first) is False
    # The new one reads the whole range again, the reclaimed rows included.
    assert len(claims.deliveries_read(lease=again, after=id_from - 1, limit=10)) == 5


@pytest.mark.django_db(transaction=True)
def test_a_batch_whose_range_another_live_task_holds_tries_again_later(
    smtp_settings, no_broker, settings
):
    settings.EDM_LEASE_RETRY_SECONDS = 7
    campaign, id_from, id_to = started(4, no_broker)
    other = claims.deliveries_lease(
        campaign_id=campaign.pk, id_from=id_from, id_to=id_from + 1, holder="busy-task"
    )
    no_broker.clear()
    assert campaign_send_batch(campaign_id=campaign.pk, id_from=id_from, id_to=id_to) == 0
    assert smtp_settings.messages == []
    assert {status for _, status, _ in rows(campaign)} == {"pending"}
    assert list(DeliveryLease.objects.values_list("holder", flat=True)) == ["busy-task"]
    # Enqueued again (with the countdown) rather than left to the sweeper's slow path.
    assert no_broker == [("campaign_send_batch", (campaign.pk, id_from, id_to))]
    # Once the other task is done, the retry sends the whole range.
    claims.deliveries_lease_end(other)
    campaign_send_batch(campaign_id=campaign.pk, id_from=id_from, id_to=id_to)
    assert {status for _, status, _ in rows(campaign)} == {"sent"}
    assert len(smtp_settings.messages) == 4


@pytest.mark.django_db(transaction=True)
def test_a_refused_batch_of_a_paused_campaign_is_not_tried_again(smtp_settings, no_broker):
    campaign, id_from, id_to = started(2, no_broker)
    claims.deliveries_lease(
        campaign_id=campaign.pk, id_from=id_from, id_to=id_to, holder="busy-task"
    )
    campaign_services.campaign_pause(campaign_id=campaign.pk)
    no_broker.clear()
    assert campaign_send_batch(campaign_id=campaign.pk, id_from=id_from, id_to=id_to) == 0
    assert no_broker == []


def _send_with_outcomes_unwritten(smtp_settings, no_broker, monkeypatch):
    """A batch whose messages left but whose outcomes never reached the database (it went
    away): the lease stays until it expires, then the sweeper takes it back."""
    campaign, id_from, id_to = started(3, no_broker)

    def broken(outcomes):
        raise RuntimeError("database went away")

    with monkeypatch.context() as patched, pytest.raises(RuntimeError):
        patched.setattr(delivery_services, "deliveries_record", broken)
        campaign_send_batch(campaign_id=campaign.pk, id_from=id_from, id_to=id_to)
    assert len(smtp_settings.messages) == 3
    lease = DeliveryLease.objects.get()
    assert lease.read_to == id_to
    expire(lease)
    return campaign


@pytest.mark.django_db(transaction=True)
def test_a_batch_whose_outcomes_could_not_be_written_is_replayed_from_the_journal(
    smtp_settings, no_broker, monkeypatch
):
    """Ending the lease would make the rows pending and send them again at once; the
    sweeper's reclaim first applies the journal's acceptances: sent, the reply kept, the
    attempt counted, nothing to send again."""
    campaign = _send_with_outcomes_unwritten(smtp_settings, no_broker, monkeypatch)
    assert claims.deliveries_reclaim_expired() == 0
    assert [(s, a) for _, s, a in rows(campaign)] == [("sent", 1)] * 3
    replies = Delivery.objects.filter(campaign=campaign).values_list("smtp_code", "smtp_reply")
    assert {code for code, _ in replies} == {250}
    assert all(reply.startswith("250 ") for _, reply in replies)
    assert journal_acceptances([i for i, _, _ in rows(campaign)]) == {}  # drained


@pytest.mark.django_db(transaction=True)
def test_without_its_journal_a_batch_whose_outcomes_could_not_be_written_is_sent_again(
    smtp_settings, no_broker, monkeypatch
):
    """Redis restarted empty: the old rule, every row back with its attempt counted."""
    campaign = _send_with_outcomes_unwritten(smtp_settings, no_broker, monkeypatch)
    journal_drain([i for i, _, _ in rows(campaign)])
    assert claims.deliveries_reclaim_expired() == 3
    assert [(s, a) for _, s, a in rows(campaign)] == [("deferred", 1)] * 3


@pytest.mark.django_db(transaction=True)
def test_per_row_claims_leave_a_leased_range_alone(no_broker):
    campaign, id_from, id_to = started(6, no_broker)
    lease = claims.deliveries_lease(
        campaign_id=campaign.pk, id_from=id_from, id_to=id_from + 2, holder="task"
    )
    claimed = claims.deliveries_claim(campaign_id=campaign.pk, limit=100)
    assert [row.id for row in claimed] == list(range(id_from + 3, id_to + 1))
    assert claims.deliveries_claim(campaign_id=campaign.pk, limit=100) == []
    claims.deliveries_lease_end(lease)
    assert [row.id for row in claims.deliveries_claim(campaign_id=campaign.pk, limit=9)] == [
        id_from,
        id_from + 1,
        id_from + 2,
    ]


@pytest.mark.django_db(transaction=True)
def test_a_lease_reads_nothing_once_the_campaign_stops_sending(no_broker):
    campaign, id_from, id_to = started(3, no_broker)
    lease = claims.deliveries_lease(
        campaign_id=campaign.pk, id_from=id_from, id_to=id_to, holder="task"
    )
    campaign_services.campaign_pause(campaign_id=campaign.pk)
    assert claims.deliveries_read(lease=lease, after=id_from - 1, limit=10) == []
    assert (
        claims.deliveries_lease(
            campaign_id=campaign.pk, id_from=id_from, id_to=id_to, holder="other"
        )
        is None
    )


@pytest.mark.django_db(transaction=True)
def test_a_row_cancelled_while_on_the_wire_still_gets_what_happened_to_it(no_broker):
    campaign, id_from, id_to = started(3, no_broker)
    lease = claims.deliveries_lease(
        campaign_id=campaign.pk, id_from=id_from, id_to=id_to, holder="task"
    )
    on_the_wire = claims.deliveries_read(lease=lease, after=id_from - 1, limit=1)[0]
    campaign_cancel(campaign_id=campaign.pk)
    assert {status for _, status, _ in rows(campaign)} == {"cancelled"}
    delivery_services.deliveries_record(
        [
            Outcome(
                delivery_id=on_the_wire.id,
                status=DeliveryStatus.SENT,
                reason="",
                smtp_code=250,
                enhanced_status="2.0.0",
                reply="250 2.0.0 Ok: queued",
                attempted_at=timezone.now(),
            )
        ]
    )
    assert [status for _, status, _ in rows(campaign)] == ["sent", "cancelled", "cancelled"]


@pytest.mark.django_db(transaction=True)
def test_after_a_takeover_the_dead_tasks_rows_go_one_at_a_time_each_written_first(
    smtp_settings, no_broker, monkeypatch
):
    """One of the rows a dead task had read may be what killed it: they are sent one at a
    time, each outcome written before the next row is read, so a recipient that kills its
    worker again is the only one charged with the reclaim (EDM_MAX_RECLAIMS)."""
    campaign, id_from, id_to = started(6, no_broker)
    dead = claims.deliveries_lease(
        campaign_id=campaign.pk, id_from=id_from, id_to=id_to, holder="task-1"
    )
    claims.deliveries_read(lease=dead, after=id_from - 1, limit=3)
    ids = [row_id for row_id, _, _ in rows(campaign)]
    seen = []
    real = batch.outcome_for_result

    def look(*args, delivery_id, **kwargs):
        lease = DeliveryLease.objects.get()
        sent = set(
            Delivery.objects.filter(campaign=campaign, status="sent").values_list("id", flat=True)
        )
        seen.append((delivery_id, lease.read_to, sent))
        return real(*args, delivery_id=delivery_id, **kwargs)

    monkeypatch.setattr(batch, "outcome_for_result", look)
    # The same task, delivered again after its worker died.
    campaign_send_batch(campaign_id=campaign.pk, id_from=id_from, id_to=id_to, holder="task-1")
    # The careful rows one by one, in order; then the rest, whose results come back in
    # any order from the pool's connections.
    assert [delivery_id for delivery_id, _, _ in seen[:3]] == ids[:3]
    assert sorted(delivery_id for delivery_id, _, _ in seen[3:]) == ids[3:]
    for k, (delivery_id, read_to, sent) in enumerate(seen[:3]):
        assert read_to == delivery_id  # nothing read beyond the row on the wire
        assert sent == set(ids[:k])  # everything before it written
    assert [read_to for _, read_to, _ in seen[3:]] == [ids[-1]] * 3  # then a chunk again
    for _, _, sent in seen[3:]:
        assert ids[2] in sent  # the last careful row was written before the chunk was read
    assert [(s, a) for _, s, a in rows(campaign)] == [("sent", 2)] * 3 + [("sent", 1)] * 3
    assert len(smtp_settings.messages) == 6


@pytest.mark.django_db(transaction=True)
def test_a_per_row_claim_waits_for_a_lease_being_taken_on_postgresql(no_broker):
    """A per-row claim and a range lease of the same campaign take the same advisory lock:
    a claim that started while a lease was being taken waits for it and then sees it,
    instead of claiming rows of the range on a snapshot from before the lease."""
    import threading

    from django.db import connection, connections

    if connection.vendor != "postgresql":
        pytest.skip("SQLite serializes every writer; the advisory lock is PostgreSQL's")
    campaign, id_from, id_to = started(4, no_broker)
    claimed: list = []

    def claim() -> None:
        try:
            claimed.extend(claims.deliveries_claim(campaign_id=campaign.pk, limit=10))
        finally:
            connections.close_all()

    with transaction.atomic():  # a lease being taken: the lock is held until commit
        claims._lock_campaign_claims(campaign.pk)
        claimer = threading.Thread(target=claim)
        claimer.start()
        claimer.join(0.5)
        assert claimer.is_alive()  # waiting for the lock
        DeliveryLease.objects.create(
            campaign_id=campaign.pk,
            id_from=id_from,
            id_to=id_to,
            holder="task",
            expires_at=timezone.now() + timedelta(minutes=5),
        )
    claimer.join(10)
    assert not claimer.is_alive()
    assert claimed == []  # it saw the lease once it got the lock


@pytest.mark.django_db(transaction=True)
def test_a_careful_phase_cut_short_by_the_time_budget_goes_on_in_the_continuation(
    smtp_settings, no_broker, settings
):
    campaign, id_from, id_to = started(4, no_broker)
    dead = claims.deliveries_lease(
        campaign_id=campaign.pk, id_from=id_from, id_to=id_to, holder="task-1"
    )
    claims.deliveries_read(lease=dead, after=id_from - 1, limit=3)
    ids = [row_id for row_id, _, _ in rows(campaign)]
    settings.EDM_TASK_SECONDS = 0  # out of time before the first row
    no_broker.clear()
    campaign_send_batch(campaign_id=campaign.pk, id_from=id_from, id_to=id_to, holder="task-1")
    assert smtp_settings.messages == []
    # The continuation carries the careful bound: the suspects still go one at a time.
    assert no_broker == [("campaign_send_batch", (campaign.pk, id_from, id_to, ids[2]))]
    settings.EDM_TASK_SECONDS = 30
    reads = []
    real = claims.deliveries_read

    def recording(**kwargs):
        reads.append(kwargs["limit"])
        return real(**kwargs)

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(claims, "deliveries_read", recording)
        campaign_send_batch(
            campaign_id=campaign.pk, id_from=id_from, id_to=id_to, careful_to=ids[2]
        )
    assert reads[:3] == [1, 1, 1]  # the three suspects, one read each
    assert {status for _, status, _ in rows(campaign)} == {"sent"}
    assert len(smtp_settings.messages) == 4
