"""Celery tasks of the campaigns app: thin interfaces over the send engine (campaigns.sending)."""

from __future__ import annotations

from celery import shared_task
from celery.signals import worker_process_shutdown

from campaigns.sending import batch, dispatch, lane, sweep


@shared_task(name="campaigns.dispatch")
def campaign_dispatch(campaign_id: int) -> None:
    dispatch.campaign_dispatch(campaign_id=campaign_id)


@shared_task(name="campaigns.send_batch", bind=True)
def campaign_send_batch(
    self,
    campaign_id: int,
    id_from: int | None,
    id_to: int | None,
    careful_to: int | None = None,
) -> None:
    # The task's id holds its range's lease: delivered again after its worker died, the
    # task takes its own lease back at once. ``careful_to``: a continuation of a task whose
    # one-at-a-time phase (after taking a dead task's rows over) was cut short.
    batch.campaign_send_batch(
        campaign_id=campaign_id,
        id_from=id_from,
        id_to=id_to,
        wait=False,
        holder=self.request.id or "",
        careful_to=careful_to,
    )


@shared_task(name="campaigns.resume")
def campaign_resume(campaign_id: int) -> None:
    dispatch.campaign_enqueue_open(campaign_id=campaign_id)


@shared_task(name="campaigns.sweep")
def campaigns_sweep() -> None:
    sweep.campaigns_sweep()


@worker_process_shutdown.connect
def _drain_database_lane(**kwargs: object) -> None:
    """A pool process that stops (warm shutdown, max tasks) first writes what its last
    batch left on the database lane."""
    lane.database_lane_close()


import campaigns.tracking_tasks  # noqa: E402,F401  (registers the tracking tasks)
