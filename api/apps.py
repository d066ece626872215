"""The transactional email API, its keys and the SMTP relay for applications."""

from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "api"
    verbose_name = "API"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Any saved or deleted key (admin edits included) ends every process's cached copy.
        from django.db.models.signals import post_delete, post_save

        from api.models import ApiKey
        from api.services import api_keys_changed

        def _changed(sender, **kwargs) -> None:
            api_keys_changed()

        post_save.connect(_changed, sender=ApiKey, weak=False, dispatch_uid="api_keys_changed_save")
        post_delete.connect(
            _changed, sender=ApiKey, weak=False, dispatch_uid="api_keys_changed_delete"
        )
