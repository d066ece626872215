"""Campaign lifecycle: schedule, start, pause, resume, cancel, and the error-rate pause."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns.errors import CampaignStateError, CampaignValidationError
from campaigns.models import CampaignStatus
from campaigns.sending.batch import campaign_send_batch
from campaigns.sending.dispatch import campaign_dispatch, campaign_enqueue_open
from campaigns.sending.sweep import campaigns_sweep
from campaigns.services import (
    campaign_cancel,
    campaign_pause,
    campaign_resume,
    campaign_schedule,
    campaign_send,
    campaign_unschedule,
)
from delivery.models import Delivery
from tests.factories import CampaignFactory, audience


def statuses(campaign) -> dict[str, str]:
    return dict(Delivery.objects.filter(campaign=campaign).values_list("email", "status"))


@pytest.mark.django_db
def test_send_dispatch_and_batches_send_everyone_once(smtp_settings, no_broker):
    campaign = CampaignFactory(lists=[audience(7)])
    campaign_send(campaign_id=campaign.pk)
    assert no_broker == [("campaign_dispatch", (campaign.pk,))]
    campaign_dispatch(campaign_id=campaign.pk)
    batches = [args for name, args in no_broker if name == "campaign_send_batch"]
    assert len(batches) == 1
    campaign_send_batch(campaign_id=campaign.pk, id_from=batches[0][1], id_to=batches[0][2])
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.SENT
    assert set(statuses(campaign).values()) == {"sent"}
    assert sorted(m.rcpt_tos[0] for m in smtp_settings.messages) == sorted(
        f"r{i}@example.com" for i in range(7)
    )
    # Dispatching again (a redelivered task) adds nobody and sends nothing more.
    campaign_dispatch(campaign_id=campaign.pk)
    assert Delivery.objects.filter(campaign=campaign).count() == 7


@pytest.mark.django_db
def test_paused_campaign_claims_nothing_and_resume_continues_from_what_was_sent(
    smtp_settings, no_broker, settings, django_capture_on_commit_callbacks
):
    settings.EDM_BATCH_SIZE = 3
    campaign = CampaignFactory(lists=[audience(7)])
    campaign_send(campaign_id=campaign.pk)
    campaign_dispatch(campaign_id=campaign.pk)
    first = [args for name, args in no_broker if name == "campaign_send_batch"][0]
    campaign_send_batch(campaign_id=campaign.pk, id_from=first[1], id_to=first[2])
    assert list(statuses(campaign).values()).count("sent") == 3

    campaign_pause(campaign_id=campaign.pk)
    assert campaign_send_batch(campaign_id=campaign.pk) == 0  # a paused campaign sends nothing
    assert len(smtp_settings.messages) == 3
    with pytest.raises(CampaignStateError):
        campaign_pause(campaign_id=campaign.pk)

    no_broker.clear()
    with django_capture_on_commit_callbacks(execute=True):
        campaign_resume(campaign_id=campaign.pk)
    assert no_broker == [("campaign_resume", (campaign.pk,))]
    campaign_enqueue_open(campaign_id=campaign.pk)
    ranges = [args for name, args in no_broker if name == "campaign_send_batch"]
    assert len(ranges) == 2  # the 4 open deliveries, in batches of 3
    for _, id_from, id_to in ranges:
        campaign_send_batch(campaign_id=campaign.pk, id_from=id_from, id_to=id_to)
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.SENT
    received = [m.rcpt_tos[0] for m in smtp_settings.messages]
    assert len(received) == 7 and len(set(received)) == 7


@pytest.mark.django_db
def test_cancel_marks_unsent_recipients_cancelled(smtp_settings, no_broker, settings):
    settings.EDM_BATCH_SIZE = 2
    campaign = CampaignFactory(lists=[audience(5)])
    campaign_send(campaign_id=campaign.pk)
    campaign_dispatch(campaign_id=campaign.pk)
    first = [args for name, args in no_broker if name == "campaign_send_batch"][0]
    campaign_send_batch(campaign_id=campaign.pk, id_from=first[1], id_to=first[2])
    campaign_cancel(campaign_id=campaign.pk)
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.CANCELLED
    assert sorted(statuses(campaign).values()) == ["cancelled"] * 3 + ["sent"] * 2
    assert campaign_send_batch(campaign_id=campaign.pk) == 0
    with pytest.raises(CampaignStateError):
        campaign_resume(campaign_id=campaign.pk)


@pytest.mark.django_db
def test_schedule_starts_when_due(smtp_settings, no_broker):
    campaign = CampaignFactory(lists=[audience(2)])
    with pytest.raises(CampaignValidationError):
        campaign_schedule(campaign_id=campaign.pk, at=timezone.now() - timedelta(minutes=1))
    campaign_schedule(campaign_id=campaign.pk, at=timezone.now() + timedelta(hours=1))
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.SCHEDULED
    campaigns_sweep()  # not due yet
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.SCHEDULED
    campaign.scheduled_at = timezone.now() - timedelta(seconds=1)
    campaign.save(update_fields=["scheduled_at"])
    campaigns_sweep()
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.SENDING
    assert ("campaign_dispatch", (campaign.pk,)) in no_broker


@pytest.mark.django_db
def test_unschedule_returns_to_draft(smtp_settings, no_broker):
    campaign = CampaignFactory(lists=[audience(1)])
    campaign_schedule(campaign_id=campaign.pk, at=timezone.now() + timedelta(days=1))
    campaign_unschedule(campaign_id=campaign.pk)
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.DRAFT


@pytest.mark.django_db
def test_high_failure_rate_pauses_the_campaign_with_a_reason(smtp_settings, no_broker, settings):
    settings.EDM_PAUSE_SAMPLE = 4
    settings.EDM_PAUSE_ERROR_RATE = 0.5
    settings.EDM_FLUSH_SECONDS = 0
    settings.EDM_BATCH_SIZE = 2
    smtp_settings.script("rcpt", "550 5.1.1 No such user")
    campaign = CampaignFactory(lists=[audience(30)])
    campaign_send(campaign_id=campaign.pk)
    campaign_dispatch(campaign_id=campaign.pk)
    campaign_send_batch(campaign_id=campaign.pk)
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.PAUSED
    assert "of the first 4 messages bounced or failed" in campaign.status_reason
    counts = list(statuses(campaign).values())
    # It stops claiming right after the sample; what was already claimed (at most the
    # messages in flight and one chunk) finishes, the rest waits for a human.
    in_flight = 4  # the default pool size
    assert 4 <= counts.count("bounced") <= 4 + in_flight + settings.EDM_BATCH_SIZE
    assert counts.count("pending") == 30 - counts.count("bounced")


@pytest.mark.django_db
def test_transient_errors_never_pause_a_campaign(smtp_settings, no_broker, settings):
    settings.EDM_PAUSE_SAMPLE = 2
    settings.EDM_FLUSH_SECONDS = 0
    smtp_settings.script("rcpt", "451 4.7.1 Greylisted, try again later")
    campaign = CampaignFactory(lists=[audience(4)])
    campaign_send(campaign_id=campaign.pk)
    campaign_dispatch(campaign_id=campaign.pk)
    campaign_send_batch(campaign_id=campaign.pk)
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.SENDING
    assert set(statuses(campaign).values()) == {"deferred"}
    assert all(d.next_attempt_at > timezone.now() for d in Delivery.objects.all())


@pytest.mark.django_db(transaction=True)
def test_a_batch_that_does_not_wait_leaves_its_last_outcomes_to_the_lane(smtp_settings, no_broker):
    """The Celery task returns once every message has its result; its last outcomes, the
    rows it gives back and the campaign's end are written on the process's database lane
    (a thread of its own on PostgreSQL), which a stopping worker process drains."""
    from campaigns.sending.lane import database_lane_close

    campaign = CampaignFactory(lists=[audience(5)])
    campaign_send(campaign_id=campaign.pk)
    campaign_dispatch(campaign_id=campaign.pk)
    ((_, (_, id_from, id_to)),) = [item for item in no_broker if item[0] == "campaign_send_batch"]
    assert campaign_send_batch(campaign_id=campaign.pk, id_from=id_from, id_to=id_to, wait=False)
    assert len(smtp_settings.messages) == 5  # on the wire before it returns
    database_lane_close()  # what worker_process_shutdown does
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.SENT
    assert set(statuses(campaign).values()) == {"sent"}


@pytest.mark.django_db
def test_dispatch_materializes_a_small_first_chunk_then_full_ones(
    smtp_settings, no_broker, settings
):
    from campaigns.sending.dispatch import _contact_id_chunks

    settings.EDM_BATCH_SIZE = 2
    settings.EDM_DISPATCH_CHUNK = 4
    campaign = CampaignFactory(lists=[audience(9)])
    chunks = _contact_id_chunks(4, first=2)
    ids = sorted(campaign.lists.get().contacts.values_list("id", flat=True))
    first_id = chunks[0][0]
    assert chunks[0] == (first_id, first_id + 1)
    assert all(b - a == 3 for a, b in chunks[1:-1])
    covered = [i for a, b in chunks for i in range(a, b + 1)]
    assert covered == list(range(first_id, chunks[-1][1] + 1))  # contiguous, no overlap
    assert set(ids) <= set(covered)
    campaign_send(campaign_id=campaign.pk)
    campaign_dispatch(campaign_id=campaign.pk)
    batches = [args for name, args in no_broker if name == "campaign_send_batch"]
    assert Delivery.objects.filter(campaign=campaign).count() == 9
    assert sum(1 for _ in batches) == 5  # 2 + 2 + 2 + 2 + 1, in id ranges


@pytest.mark.django_db(transaction=True)
def test_a_batch_started_on_the_lane_thread_does_its_database_work_inline(smtp_settings, no_broker):
    """Celery in eager mode runs a range's continuation inside the previous task's tail, on
    the lane's own thread: queueing claims for that thread and waiting for them would hang."""
    from django.db import connection

    from campaigns.sending.lane import database_lane, database_lane_close

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has no lane thread")

    campaign = CampaignFactory(lists=[audience(3)])
    campaign_send(campaign_id=campaign.pk)
    campaign_dispatch(campaign_id=campaign.pk)
    ((_, (_, id_from, id_to)),) = [item for item in no_broker if item[0] == "campaign_send_batch"]
    lane = database_lane()
    future = lane.submit(
        lambda: campaign_send_batch(
            campaign_id=campaign.pk, id_from=id_from, id_to=id_to, wait=False
        )
    )
    assert future.result(timeout=30) == 3
    database_lane_close()
    assert set(statuses(campaign).values()) == {"sent"}


@pytest.mark.django_db(transaction=True)
def test_outcomes_are_written_every_flush_rows_on_a_background_lane(
    smtp_settings, no_broker, settings, monkeypatch
):
    """On PostgreSQL the outcomes go to the lane as soon as EDM_FLUSH_ROWS are waiting,
    not only every EDM_FLUSH_SECONDS; SQLite writes inline, once a second or at the end."""
    from django.db import connection

    from campaigns.sending import batch
    from campaigns.sending.lane import database_lane_close

    settings.EDM_FLUSH_ROWS = 2
    settings.EDM_FLUSH_SECONDS = 3600
    writes: list[int] = []
    real = batch._BatchRun._write

    def counted(self, outcomes):
        writes.append(len(outcomes))
        return real(self, outcomes)

    monkeypatch.setattr(batch._BatchRun, "_write", counted)
    campaign = CampaignFactory(lists=[audience(8)])
    campaign_send(campaign_id=campaign.pk)
    campaign_dispatch(campaign_id=campaign.pk)
    ((_, (_, id_from, id_to)),) = [item for item in no_broker if item[0] == "campaign_send_batch"]
    campaign_send_batch(campaign_id=campaign.pk, id_from=id_from, id_to=id_to)
    database_lane_close()
    assert sum(writes) == 8
    assert set(statuses(campaign).values()) == {"sent"}
    if connection.vendor == "postgresql":
        # The first two went to the lane while the others were sending (later ones wait
        # while a write is running), the rest with the task's tail.
        assert len(writes) >= 2 and writes[0] < 8, writes
    else:
        assert writes == [8]
