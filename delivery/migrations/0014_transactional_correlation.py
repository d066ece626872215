"""Reports about transactional messages point at their deliveries (api 0006 moved them): the
"tx-<id>" message_ref columns go; contact-less recipients get their lower(email) index."""

import django.db.models.functions.text
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("delivery", "0013_transactional_deliveries"),
        ("api", "0006_messages_to_deliveries"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="bouncemessage", name="bounce_message_ref"),
        migrations.RemoveField(model_name="bouncemessage", name="message_ref"),
        migrations.RemoveField(model_name="bounceoutcome", name="message_ref"),
        migrations.AddIndex(
            model_name="delivery",
            index=models.Index(
                django.db.models.functions.text.Lower("email"),
                condition=models.Q(campaign__isnull=True),
                name="delivery_tx_email",
            ),
        ),
    ]
