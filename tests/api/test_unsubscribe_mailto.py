"""A marketing API message's List-Unsubscribe mailto unsubscribes its recipient (issue 14.2)."""

from __future__ import annotations

import pytest

from delivery import tokens
from tests.delivery.test_unsubscribe_mailto import _mailto, _request

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_marketing_api_message_is_unsubscribed_by_its_mailto(api_key, smtp_server, settings):
    from api import services
    from api.models import Category
    from contacts.models import Suppression
    from delivery.intake.ingest import bounce_ingest

    settings.EDM_SMTP_URL = smtp_server.url
    settings.EDM_SMTP_TLS_CA_FILE = smtp_server.ca_file
    key, _ = api_key
    request = services.SendRequest(
        to_email="reader@example.com", subject="News", text="Hi", category=Category.MARKETING
    )
    message, _ = services.message_accept(api_key=key, request=request)
    services.message_send(message_id=message.pk)
    address, subject = _mailto(smtp_server.messages[-1])
    # A token of another purpose with the same number is refused (another secret).
    other = tokens.unsubscribe_mailto(delivery_id=message.delivery_id, purpose="other")
    forged = other.removeprefix("mailto:").partition("?")[0]
    bounce_ingest(raw=_request(to=forged, subject="x", sender="a@b.example"), source="pipe")
    assert not Suppression.objects.filter(value="reader@example.com").exists()

    result = bounce_ingest(
        raw=_request(to=address, subject=subject, sender="reader@example.com", nonce="2"),
        source="pipe",
        envelope_rcpts=[address],
    )
    assert result.status == "applied"
    assert result.delivery_id == message.delivery_id
    assert [e.kind for e in message.delivery.events.all()] == ["sent", "unsubscribe"]
    assert Suppression.objects.get(value="reader@example.com").reason == "unsubscribe"
