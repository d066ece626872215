from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class CampaignsConfig(AppConfig):
    name = "campaigns"
    verbose_name = _("Campaigns")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Mail to a message's List-Unsubscribe mailto: the intake finds the delivery and asks
        # us what unsubscribing its recipient means (it cannot import this app).
        from campaigns.services import delivery_unsubscribe
        from delivery.intake.mailto import unsubscriber_install

        unsubscriber_install(delivery_unsubscribe)
