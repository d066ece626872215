"""Celery tasks of the delivery app (autodiscovery entry point)."""

from celery import shared_task

import delivery.intake.tasks  # noqa: F401
from delivery.signup_mail import signup_confirmation_send


@shared_task(name="delivery.signup_confirmation")
def signup_confirmation(subscription_id: int, form_id: int) -> None:
    signup_confirmation_send(subscription_id=subscription_id, form_id=form_id)
