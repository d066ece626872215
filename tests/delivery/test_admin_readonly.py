"""The records the admin shows and never writes (deliveries, SMTP checks): nothing to add or
change, every field read-only (config.admin_mixins.ReadOnlyAdminMixin)."""

import pytest
from django.urls import reverse
from django.utils import timezone

from campaigns.models import Campaign
from delivery.models import Delivery, DeliveryStatus
from delivery.monitor.models import SmtpCheck
from tests.factories import ContactFactory

pytestmark = pytest.mark.django_db


def _delivery() -> Delivery:
    campaign = Campaign.objects.create(
        name="Spring", subject="Hi", html="<p>Hi</p>", from_email="news@skylark.test"
    )
    contact = ContactFactory()
    return Delivery.objects.create(
        campaign=campaign, contact=contact, email=contact.email, status=DeliveryStatus.SENT
    )


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("delivery_delivery", _delivery),
        (
            "delivery_smtpcheck",
            lambda: SmtpCheck.objects.create(
                target="smtp.example.com:587 (starttls)",
                checked_at=timezone.now(),
                health="ok",
                up=True,
            ),
        ),
    ],
)
def test_the_record_is_shown_and_never_written(admin_client, name, make):
    record = make()
    assert admin_client.get(reverse(f"admin:{name}_changelist")).status_code == 200
    assert admin_client.get(reverse(f"admin:{name}_add")).status_code == 403
    change = reverse(f"admin:{name}_change", args=[record.pk])
    page = admin_client.get(change)
    assert page.status_code == 200
    assert b'name="_save"' not in page.content  # shown, not editable
    assert admin_client.post(change, {}).status_code == 403
