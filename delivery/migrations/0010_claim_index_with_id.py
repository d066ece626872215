# The claim's index carries the id, so a batch task's id range is an index condition.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0008_campaign_attachments"),
        ("contacts", "0004_slim_indexes"),
        ("delivery", "0009_bounce_message_ref"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="delivery",
            index=models.Index(
                fields=["campaign", "status", "id"], name="delivery_campaign_status_id"
            ),
        ),
        migrations.RemoveIndex(
            model_name="delivery",
            name="delivery_campaign_status",
        ),
    ]
