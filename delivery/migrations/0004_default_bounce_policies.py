"""Default bounce policies: hard 1 -> suppress, complaint 1 -> suppress, soft 5 in 30 days."""

from django.db import migrations

DEFAULTS = [
    ("hard", 1, 0, "suppress"),
    ("complaint", 1, 0, "suppress"),
    ("soft", 5, 30, "suppress"),
]


def create_defaults(apps, schema_editor):
    BouncePolicy = apps.get_model("delivery", "BouncePolicy")
    for kind, count, window_days, action in DEFAULTS:
        BouncePolicy.objects.get_or_create(
            kind=kind, defaults={"count": count, "window_days": window_days, "action": action}
        )


def remove_defaults(apps, schema_editor):
    # Rows may have been edited in the admin since: leave them to the table drop.
    pass


class Migration(migrations.Migration):
    dependencies = [("delivery", "0003_bounce_intake")]

    operations = [migrations.RunPython(create_defaults, remove_defaults)]
