from django.apps import AppConfig


class CampaignsConfig(AppConfig):
    name = "campaigns"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Mail to a campaign message's List-Unsubscribe mailto: the intake asks us (it cannot
        # import the campaigns app, which depends on it).
        from campaigns.unsubscribe_mail import CampaignUnsubscribeHandler
        from delivery.intake.mailto import unsubscribe_handler_register

        unsubscribe_handler_register(name="campaigns", handler=CampaignUnsubscribeHandler())
