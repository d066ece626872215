"""Step 2 of 3: every transactional message becomes a Delivery without a campaign.

Its status, attempts, SMTP reply and times move to the delivery, its events to delivery
events, the bounce reports that named it ("tx-<public id>") to the delivery's foreign key,
and the keys its copies went out with to DeliveryAlias, so that reports still arriving for
messages sent before the upgrade find them (delivery.intake checks their tags). The old
correlation header is cut from the stored message: the send stamps the delivery's own.
"""

from django.db import migrations

BATCH = 2000
_OLD_HEADER = b"X-Skylark-Delivery: "


def _strip_old_header(raw: bytes) -> bytes:
    raw = bytes(raw)
    if raw.startswith(_OLD_HEADER):
        end = raw.find(b"\r\n")
        if end >= 0:
            return raw[end + 2 :]
    return raw


def forward(apps, schema_editor):
    Message = apps.get_model("api", "TransactionalMessage")
    MessageEvent = apps.get_model("api", "MessageEvent")
    Delivery = apps.get_model("delivery", "Delivery")
    DeliveryEvent = apps.get_model("delivery", "DeliveryEvent")
    DeliveryAlias = apps.get_model("delivery", "DeliveryAlias")
    BounceMessage = apps.get_model("delivery", "BounceMessage")
    BounceOutcome = apps.get_model("delivery", "BounceOutcome")

    last = 0
    while True:
        messages = list(
            Message.objects.filter(pk__gt=last, delivery__isnull=True).order_by("pk")[:BATCH]
        )
        if not messages:
            break
        last = messages[-1].pk
        deliveries = Delivery.objects.bulk_create(
            Delivery(
                campaign=None,
                contact=None,
                email=m.to_email,
                status=m.status,
                attempts=m.attempts,
                next_attempt_at=m.next_attempt_at,
                lease_expires_at=m.lease_expires_at,
                message_id=m.message_id,
                smtp_code=m.smtp_code,
                enhanced_status=m.enhanced_status,
                smtp_reply=m.smtp_reply,
                reason=m.reason,
                first_attempt_at=m.first_attempt_at,
                sent_at=m.sent_at,
            )
            for m in messages
        )
        by_message = {}
        aliases = []
        for message, delivery in zip(messages, deliveries, strict=True):
            by_message[message.pk] = delivery.pk
            message.delivery_id = delivery.pk
            message.raw = _strip_old_header(message.raw)
            aliases.append(DeliveryAlias(key=f"tx-{message.public_id}", delivery_id=delivery.pk))
            aliases.append(DeliveryAlias(key=f"txpk-{message.pk}", delivery_id=delivery.pk))
            key = f"tx-{message.public_id}"
            BounceMessage.objects.filter(message_ref=key).update(delivery_id=delivery.pk)
            BounceOutcome.objects.filter(message_ref=key).update(delivery_id=delivery.pk)
        Message.objects.bulk_update(messages, ["delivery", "raw"])
        DeliveryAlias.objects.bulk_create(aliases, ignore_conflicts=True)
        DeliveryEvent.objects.bulk_create(
            DeliveryEvent(
                delivery_id=by_message[e.message_id],
                kind=e.kind,
                created_at=e.created_at,
                smtp_code=e.smtp_code,
                enhanced_status=e.enhanced_status,
                detail=e.detail,
            )
            for e in MessageEvent.objects.filter(message_id__in=list(by_message)).exclude(
                kind="accepted"  # no delivery event: the message's created_at says it
            )
        )


class Migration(migrations.Migration):
    dependencies = [
        ("api", "0005_message_delivery"),
        ("delivery", "0013_transactional_deliveries"),
    ]

    # Backwards the deliveries stay and the messages' own columns (step 3) come back empty:
    # going back is for development databases, not a way to undo an upgrade.
    operations = [migrations.RunPython(forward, migrations.RunPython.noop, elidable=False)]
