"""Step 3 of 3: the message keeps only the request; its outcome is its Delivery's."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("api", "0006_messages_to_deliveries"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="transactionalmessage", name="txmessage_due"),
        migrations.RemoveIndex(model_name="transactionalmessage", name="txmessage_lease"),
        migrations.DeleteModel(name="MessageEvent"),
        *(
            migrations.RemoveField(model_name="transactionalmessage", name=name)
            for name in (
                "to_email",
                "message_id",
                "status",
                "attempts",
                "next_attempt_at",
                "lease_expires_at",
                "smtp_code",
                "enhanced_status",
                "smtp_reply",
                "reason",
                "first_attempt_at",
                "sent_at",
                "updated_at",
            )
        ),
        migrations.AlterField(
            model_name="transactionalmessage",
            name="delivery",
            field=models.OneToOneField(
                on_delete=django.db.models.deletion.CASCADE,
                related_name="transactional",
                to="delivery.delivery",
            ),
        ),
    ]
