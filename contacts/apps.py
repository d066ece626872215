from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ContactsConfig(AppConfig):
    name = "contacts"
    verbose_name = _("Contacts")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # mailkit has no Django: its messages (template, attachment errors) are translated
        # in the request's or the task's language through Django's gettext.
        from django.utils.translation import gettext

        from mailkit import i18n

        i18n.install(gettext)
