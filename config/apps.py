"""The project itself as an app, so that its system checks (config.checks) are registered."""

from django.apps import AppConfig


class SkylarkConfig(AppConfig):
    name = "config"
    label = "skylark"
    verbose_name = "Skylark"

    def ready(self) -> None:
        from config import checks  # noqa: F401  (registers the checks)
