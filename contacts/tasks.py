"""Celery tasks for contacts: thin interfaces that fetch, call one service and return."""

from __future__ import annotations

from celery import shared_task

from contacts.imports import import_job_run


@shared_task(name="contacts.import_job")
def import_job(job_id: int) -> None:
    """Run ImportJob ``job_id`` (progress and outcome are saved on the job row)."""
    import_job_run(job_id=job_id)
