"""The bounce policy table (kind -> count within a window -> action), applied in one place for
every road: asynchronous reports and complaints (ingest.py), and the synchronous 5xx hard
bounces of campaign sends (delivery.recording) and transactional sends (the API).

What the action does to an address and its contact is written by contacts.suppression.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from django.db.models.functions import Lower

from contacts.models import SuppressionReason
from contacts.selectors import contacts_by_keys
from contacts.suppression import (
    addresses_suppress,
    contacts_bounced,
    contacts_complained,
    subscriptions_end,
)
from delivery.intake.models import (
    BounceAction,
    BouncePolicy,
    PolicyAction,
    PolicyKind,
)
from delivery.models import Delivery, DeliveryStatus

# The defaults of data migration 0004, used for a kind that has no row (a table emptied by
# hand or by a test flush must not silently stop suppressing dead addresses). To turn a rule
# off, set its action to "none" in the admin.
DEFAULT_POLICIES = {
    PolicyKind.HARD: {"count": 1, "window_days": 0, "action": PolicyAction.SUPPRESS},
    PolicyKind.COMPLAINT: {"count": 1, "window_days": 0, "action": PolicyAction.SUPPRESS},
    PolicyKind.SOFT: {"count": 5, "window_days": 30, "action": PolicyAction.SUPPRESS},
}

# A recipient the policy acts on: (address, contact id or None).
Recipient = tuple[str, int | None]


def bounce_policy_for(*, kind: str) -> BouncePolicy | None:
    """The policy in force for a kind: its row, else the default (unsaved)."""
    policy = BouncePolicy.objects.filter(kind=kind).first()
    if policy is None and kind in DEFAULT_POLICIES:
        policy = BouncePolicy(kind=kind, **DEFAULT_POLICIES[PolicyKind(kind)])
    return policy


def policy_act(
    *, policy: BouncePolicy, recipients: Sequence[Recipient], source: str, now: datetime
) -> tuple[str, int]:
    """Carry out a policy whose threshold these recipients reached: (BounceAction, how many
    subscriptions the "unsubscribe" action ended)."""
    contact_ids = [contact_id for _, contact_id in recipients if contact_id is not None]
    if policy.action == PolicyAction.UNSUBSCRIBE:
        return BounceAction.UNSUBSCRIBED, subscriptions_end(contact_ids=contact_ids, now=now)
    complaint = policy.kind == PolicyKind.COMPLAINT
    addresses_suppress(
        # SuppressionReason has no "soft bounce": repeated soft bounces are suppressed as a
        # bounce, and the source says which policy did it.
        emails=[email for email, _ in recipients],
        reason=SuppressionReason.COMPLAINT if complaint else SuppressionReason.HARD_BOUNCE,
        source=source,
    )
    if complaint:
        contacts_complained(contact_ids=contact_ids, now=now)
    else:
        contacts_bounced(contact_ids=contact_ids, now=now)
    return BounceAction.SUPPRESSED, 0


def synchronous_bounces_apply(
    *, recipients: Sequence[Recipient], source: str, now: datetime
) -> str:
    """Synchronous 5xx hard bounces under the hard-bounce policy, like a report of that kind.

    At the default (1 -> suppress) every address is suppressed at once. With a higher count a
    person's hard bounces in the window are counted: their bounced deliveries (this one
    included: its row is written first). A recipient given without a contact (a
    transactional message's) is the contact with that address, when there is one.
    """
    policy = bounce_policy_for(kind=PolicyKind.HARD)
    if policy is None or policy.action == PolicyAction.NONE or not recipients:
        return BounceAction.RECORDED
    recipients = recipients_with_contacts(recipients)
    if policy.count > 1:
        recipients = [r for r in recipients if _hard_bounces(r, policy, now) >= policy.count]
        if not recipients:
            return BounceAction.COUNTED
    action, _ = policy_act(policy=policy, recipients=recipients, source=source, now=now)
    return action


def recipients_with_contacts(recipients: Sequence[Recipient]) -> list[Recipient]:
    """The recipients, each without a contact given the contact with its address (if any)."""
    missing = {email.lower() for email, contact_id in recipients if contact_id is None}
    found = dict(contacts_by_keys(missing).values_list("email_key", "pk") if missing else ())
    return [
        (email, contact_id if contact_id is not None else found.get(email.lower()))
        for email, contact_id in recipients
    ]


def _hard_bounces(recipient: Recipient, policy: BouncePolicy, now: datetime) -> int:
    """A person's bounced deliveries in the policy's window: a contact's campaign deliveries,
    and the transactional ones (no contact of their own) to the address."""
    email, contact_id = recipient
    bounced = Delivery.objects.filter(status=DeliveryStatus.BOUNCED)
    if policy.window_days:
        bounced = bounced.filter(updated_at__gte=now - timedelta(days=policy.window_days))
    # Through the delivery_tx_email index (campaign IS NULL, lower(email)).
    count = (
        bounced.filter(campaign__isnull=True)
        .annotate(email_lower=Lower("email"))
        .filter(email_lower=email.lower())
        .count()
    )
    if contact_id is not None:
        count += bounced.filter(contact_id=contact_id).count()
    return count
