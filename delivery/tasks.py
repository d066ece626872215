"""Celery autodiscovery entry point of the delivery app."""

import delivery.bounce_tasks  # noqa: F401
