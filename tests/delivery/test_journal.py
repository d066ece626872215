"""The journal of acceptances against a real Redis: written per group, held while Redis is
away, drained by the flush, replayed by a reclaim (transactional messages here; campaigns in
tests/campaigns/test_range_lease.py and test_exactly_once.py)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
import redis
from django.utils import timezone

from api import services
from api.models import Category, Scope
from api.services import messages as message_services
from delivery import journal
from delivery.journal import JournalWriter, journal_acceptances, journal_drain
from delivery.models import Delivery
from mailkit.smtp import SendResult, SendStatus

pytestmark = pytest.mark.timeout(60)


def accepted(delivery_id: int, text: str = "2.0.0 OK queued as 7") -> SendResult:
    return SendResult(
        (delivery_id, f"<{delivery_id}@skylark.test>"), SendStatus.SENT, 250, "2.0.0", text, "data"
    )


def test_acceptances_that_arrive_together_are_written_in_one_group(redis_client):
    writer = JournalWriter()

    async def main() -> None:
        await asyncio.gather(*(writer(accepted(i)) for i in range(100, 110)))

    asyncio.run(main())
    found = journal_acceptances(range(100, 112))
    assert sorted(found) == list(range(100, 110))
    assert found[105].outcome().reply == "250 2.0.0 OK queued as 7"
    assert found[105].outcome().message_id == "<105@skylark.test>"
    assert writer.written == 10 and writer.groups < 10
    journal_drain(range(100, 105))
    assert sorted(journal_acceptances(range(100, 112))) == list(range(105, 110))


def test_a_writer_that_cannot_reach_redis_holds_the_message_until_it_can(redis_client, monkeypatch):
    """No acceptance is let go (and so no connection sends again) before it is on record."""
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    monkeypatch.setattr(journal, "get_redis", lambda: unreachable)
    writer = JournalWriter()

    async def main() -> bool:
        write = asyncio.ensure_future(writer(accepted(200)))
        await asyncio.sleep(1.0)
        held = not write.done()
        monkeypatch.setattr(journal, "get_redis", lambda: redis_client)  # Redis is back
        await asyncio.wait_for(write, 10)
        return held

    assert asyncio.run(main()) is True
    assert list(journal_acceptances([200])) == [200]


def test_a_reader_that_cannot_reach_redis_replays_nothing(monkeypatch):
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    monkeypatch.setattr(journal, "get_redis", lambda: unreachable)
    assert journal_acceptances([1, 2, 3]) == {}


@pytest.fixture
def api_key(db, redis_client):
    return services.api_key_create(application="shop", scopes=[Scope.MESSAGES_SEND])


@pytest.fixture
def smtp(smtp_server_factory, settings):
    server = smtp_server_factory(starttls=False)
    settings.EDM_SMTP_URL = server.url
    return server


def _lost_after_its_250(api_key, smtp, monkeypatch):
    """A transactional message accepted by the server whose outcome never reached the
    database (it went away); its lease then runs out."""
    key, _ = api_key
    request = services.SendRequest(to_email="a@example.com", subject="S", text="T",
                                   category=Category.TRANSACTIONAL)  # fmt: skip
    message, _ = services.message_accept(api_key=key, request=request)

    def broken(outcomes):
        raise RuntimeError("database went away")

    with monkeypatch.context() as patched, pytest.raises(RuntimeError):
        patched.setattr(message_services, "deliveries_record", broken)
        message_services.message_send(message_id=message.pk)
    assert len(smtp.wait_for_messages(1)) == 1
    Delivery.objects.filter(pk=message.delivery_id).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    return message


def test_a_transactional_message_lost_after_its_250_is_replayed_not_sent_again(
    api_key,
    smtp,
    monkeypatch,
):
    message = _lost_after_its_250(api_key, smtp, monkeypatch)
    assert message_services.messages_sweep()["reclaimed"] == 0
    delivery = Delivery.objects.get(pk=message.delivery_id)
    assert (delivery.status, delivery.attempts, delivery.smtp_code) == ("sent", 1, 250)
    assert delivery.smtp_reply.startswith("250 ")
    assert delivery.message_id  # kept, not blanked by the replay
    assert services.message_send(message_id=message.pk) == ""  # nothing left to send
    assert len(smtp.messages) == 1


def test_without_its_journal_a_lost_transactional_message_is_sent_again(
    api_key,
    smtp,
    monkeypatch,
):
    """Redis restarted empty: the old rule (at least once)."""
    message = _lost_after_its_250(api_key, smtp, monkeypatch)
    journal_drain([message.delivery_id])
    assert message_services.messages_sweep()["reclaimed"] == 1
    assert services.message_send(message_id=message.pk) == "sent"
    assert len(smtp.wait_for_messages(2)) == 2
