"""A transactional message gets its Delivery (step 1 of 3: the link, nullable for the copy)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("api", "0004_message_event_complaint"),
        ("delivery", "0013_transactional_deliveries"),
    ]

    operations = [
        migrations.AddField(
            model_name="transactionalmessage",
            name="delivery",
            field=models.OneToOneField(
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="transactional",
                to="delivery.delivery",
            ),
        ),
    ]
