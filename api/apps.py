"""The transactional email API, its keys and the SMTP relay for applications."""

from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "api"
    verbose_name = "API"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Bounces and complaints about transactional messages: the intake asks us (it cannot
        # import the API app, which depends on it).
        from api.bounce_glue import TransactionalCorrelator
        from delivery.intake import correlator_register

        correlator_register(name="transactional", correlator=TransactionalCorrelator())
