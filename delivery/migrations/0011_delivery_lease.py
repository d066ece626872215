# Range leases for batch tasks; room in each page of deliveries for the row's new version.
#
# A delivery is written once after it is inserted (its outcome). On full pages (the
# default fillfactor of 100) that new version goes to another page, which cost a third
# more than the same update with room on the page; at 50 it stays on its page.

import django.db.models.deletion
from django.db import migrations, models


def _fillfactor(value: int):
    def apply(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(f"ALTER TABLE delivery_delivery SET (fillfactor = {value})")

    return apply


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0008_campaign_attachments"),
        ("delivery", "0010_claim_index_with_id"),
    ]

    operations = [
        migrations.CreateModel(
            name="DeliveryLease",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("id_from", models.BigIntegerField()),
                ("id_to", models.BigIntegerField()),
                ("read_to", models.BigIntegerField(blank=True, null=True)),
                ("holder", models.CharField(max_length=64)),
                ("expires_at", models.DateTimeField()),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "campaign",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="campaigns.campaign",
                    ),
                ),
            ],
            options={
                "indexes": [
                    models.Index(fields=["campaign", "id_from"], name="delivery_lease_range"),
                    models.Index(fields=["expires_at"], name="delivery_lease_expiry"),
                ],
            },
        ),
        migrations.RunPython(_fillfactor(50), _fillfactor(100)),
    ]
