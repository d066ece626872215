"""The upgrade that makes deliveries of transactional messages (api 0005-0007, delivery 0014):
existing messages, their events and bounce reports move over, and reports still arriving for
copies sent before the upgrade (old return path, old ENVID, old unsubscribe mailto) find their
delivery, tag-checked as before; forged ones still match nothing."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from delivery.tokens import purpose_secret, unsubscribe_mailto
from mailkit.verp import keyed_reference, verp_address
from tests.delivery.test_intake import make_dsn
from tests.delivery.test_unsubscribe_mailto import _request

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("api", "0005_message_delivery"), ("delivery", "0013_transactional_deliveries")]
OLD_HEADER = b"X-Skylark-Delivery: tx-old.tag\r\n"


def _old_return_path(message_pk: int) -> str:
    secret = hmac.new(
        settings.SECRET_KEY.encode(), b"skylark-verp-transactional", hashlib.sha256
    ).hexdigest()
    return verp_address(delivery_id=message_pk, domain=settings.EDM_BOUNCE_DOMAIN, secret=secret)


def _old_key(public_id: uuid.UUID) -> str:
    return keyed_reference(f"tx-{public_id}", secret=purpose_secret("tx-reference"))


def _migrate(targets) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor


@pytest.fixture
def old_messages():
    """Three messages as the old schema kept them: sent, deferred and bounced (with events and
    a report), then the upgrade."""
    executor = _migrate(BEFORE)
    apps = executor.loader.project_state(BEFORE).apps
    ApiKey = apps.get_model("api", "ApiKey")
    Message = apps.get_model("api", "TransactionalMessage")
    MessageEvent = apps.get_model("api", "MessageEvent")
    BounceMessage = apps.get_model("delivery", "BounceMessage")
    now = timezone.now()
    key = ApiKey.objects.create(application="shop", prefix="p1", secret_hash="x" * 64)

    def message(to: str, status: str, **fields):
        return Message.objects.create(
            api_key=key,
            from_email="shop@shop.test",
            to_email=to,
            subject="Your order",
            raw=OLD_HEADER + b"Subject: Your order\r\n\r\nThanks\r\n",
            status=status,
            message_id=f"<{to}@shop.test>",
            **fields,
        )

    sent = message("sent@example.com", "sent", attempts=1, sent_at=now, category="marketing")
    deferred = message(
        "later@example.com", "deferred", attempts=2, next_attempt_at=now + timedelta(minutes=5)
    )
    bounced = message(
        "dead@example.com", "bounced", attempts=1, smtp_code=550, reason="unknown_user"
    )
    for kind in ("sent", "complaint"):
        MessageEvent.objects.create(message=sent, kind=kind, created_at=now)
    MessageEvent.objects.create(message=bounced, kind="bounced", created_at=now, smtp_code=550)
    report = BounceMessage.objects.create(
        received_at=now,
        source="pipe",
        sha256="a" * 64,
        raw=b"",
        size=0,
        kind="hard",
        status="applied",
        message_ref=f"tx-{bounced.public_id}",
    )
    _migrate(executor.loader.graph.leaf_nodes())
    return {"sent": sent, "deferred": deferred, "bounced": bounced, "report": report.pk}


def test_messages_become_deliveries_with_their_history(old_messages):
    from api.models import TransactionalMessage
    from delivery.intake.models import BounceMessage

    sent = TransactionalMessage.objects.select_related("delivery").get(pk=old_messages["sent"].pk)
    assert sent.public_id == old_messages["sent"].public_id
    delivery = sent.delivery
    assert (delivery.campaign_id, delivery.contact_id) == (None, None)
    assert (delivery.email, delivery.status, delivery.attempts) == ("sent@example.com", "sent", 1)
    assert delivery.message_id == "<sent@example.com@shop.test>" and delivery.sent_at
    assert [e.kind for e in delivery.events.order_by("id")] == ["sent", "complaint"]
    # The old correlation header is cut: the send stamps the delivery's own.
    assert bytes(sent.raw).startswith(b"Subject: Your order")

    deferred = TransactionalMessage.objects.get(pk=old_messages["deferred"].pk).delivery
    assert deferred.status == "deferred" and deferred.next_attempt_at and deferred.attempts == 2
    bounced = TransactionalMessage.objects.get(pk=old_messages["bounced"].pk).delivery
    assert (bounced.status, bounced.smtp_code, bounced.reason) == ("bounced", 550, "unknown_user")
    assert BounceMessage.objects.get(pk=old_messages["report"]).delivery_id == bounced.pk


def test_reports_about_copies_sent_before_the_upgrade_still_match(old_messages):
    from api.models import TransactionalMessage
    from delivery.intake.ingest import bounce_ingest

    old = old_messages["sent"]
    delivery = TransactionalMessage.objects.get(pk=old.pk).delivery
    by_verp = bounce_ingest(
        raw=make_dsn(recipient="sent@example.com", nonce="v"),
        source="smtp",
        envelope_rcpts=[_old_return_path(old.pk)],
    )
    assert (by_verp.matched_by, by_verp.delivery_id) == ("verp", delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == "bounced"

    later = TransactionalMessage.objects.get(pk=old_messages["deferred"].pk).delivery
    key = _old_key(old_messages["deferred"].public_id)
    by_envid = bounce_ingest(raw=make_dsn(recipient="later@example.com", envid=key), source="pipe")
    assert (by_envid.matched_by, by_envid.delivery_id) == ("envid", later.pk)


def test_forged_old_style_keys_match_nothing(old_messages):
    from delivery.intake.ingest import bounce_ingest

    old = old_messages["sent"]
    # The right id with a wrong tag, and the bare key a forger could write.
    wrong_tag = _old_key(old.public_id)[:-1] + "a"
    for nonce, envid in (("1", wrong_tag), ("2", f"tx-{old.public_id}")):
        result = bounce_ingest(
            raw=make_dsn(recipient="sent@example.com", envid=envid, nonce=nonce), source="pipe"
        )
        assert result.delivery_id is None and result.status == "untrusted"
    forged_path = verp_address(
        delivery_id=old.pk, domain=settings.EDM_BOUNCE_DOMAIN, secret="not-the-secret"
    )
    result = bounce_ingest(
        raw=make_dsn(recipient="sent@example.com", nonce="3"),
        source="smtp",
        envelope_rcpts=[forged_path],
    )
    assert result.delivery_id is None


def test_an_old_marketing_messages_unsubscribe_mailto_still_works(old_messages):
    from api.models import TransactionalMessage
    from contacts.models import Suppression
    from delivery.intake.ingest import bounce_ingest

    old = old_messages["sent"]  # a marketing message
    mailto = unsubscribe_mailto(
        delivery_id=old.public_id.int, purpose="unsubscribe-mailto-transactional"
    )
    address, _, query = mailto.removeprefix("mailto:").partition("?subject=unsubscribe%20")
    result = bounce_ingest(
        raw=_request(to=address, subject=f"unsubscribe {query}", sender="sent@example.com"),
        source="pipe",
        envelope_rcpts=[address],
    )
    delivery = TransactionalMessage.objects.get(pk=old.pk).delivery
    assert (result.status, result.delivery_id) == ("applied", delivery.pk)
    assert Suppression.objects.get(value="sent@example.com").reason == "unsubscribe"
