"""What the bounce intake's List-Unsubscribe mailto (delivery.intake.mailto) needs from campaigns.

Registered in CampaignsConfig.ready: a mail to a campaign message's unsubscribe address
unsubscribes that delivery's recipient exactly as its one-click link does
(`delivery_unsubscribe`), while the dependency stays campaigns -> delivery.
"""

from __future__ import annotations

from campaigns.services import delivery_unsubscribe
from delivery.intake.mailto import Unsubscribed
from delivery.models import Delivery
from delivery.tokens import unsubscribe_token_parse


class CampaignUnsubscribeHandler:
    """Campaign deliveries, by the signed token of their unsubscribe address."""

    def unsubscribe(self, token: str, *, source: str) -> Unsubscribed | None:
        delivery_id = unsubscribe_token_parse(token)
        if delivery_id is None:
            return None
        delivery = Delivery.objects.filter(pk=delivery_id).only("email", "contact_id").first()
        if delivery is None:
            return None
        changed = delivery_unsubscribe(delivery_id=delivery_id, source=source)
        return Unsubscribed(
            delivery_id=delivery_id,
            message_ref="",
            email=delivery.email,
            contact_id=delivery.contact_id,
            changed=changed,
        )
