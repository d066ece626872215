"""End to end: a campaign from a domain with a DKIM key, sent by a real worker through the
scripted SMTP server; every message received verifies with dkimpy against the published record.
"""

from __future__ import annotations

import io
import json

import dkim as dkimpy
import pytest
from django.core.management import call_command

from campaigns.models import Campaign, CampaignStatus
from campaigns.services import campaign_create, campaign_send
from tests.factories import ContactFactory, ContactListFactory, SubscriptionFactory
from tests.worker import wait_until

RECIPIENTS = [
    ("alice@example.com", "Alice", {"city": "Paris"}),
    ("zhang@example.cn", "张伟", {"city": "北京"}),
    ("bob@example.org", "Bob  O'Neil", {}),
]


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_every_message_verifies_with_the_published_record(
    algorithm, transactional_db, smtp_server, celery_worker_factory
):
    out = io.StringIO()
    call_command(
        "dkim_keygen", "skylark.test", "--selector", "e2e", "--algorithm", algorithm, "--json",
        stdout=out,
    )  # fmt: skip
    record = json.loads(out.getvalue())
    contact_list = ContactListFactory(name="DKIM")
    for email, name, attributes in RECIPIENTS:
        SubscriptionFactory(
            contact=ContactFactory(email=email, name=name, attributes=attributes),
            contact_list=contact_list,
        )
    campaign = campaign_create(
        name="DKIM e2e",
        list_names=["DKIM"],
        subject="{{ name }}，春季新品 – spring news",
        html=(
            "<p>Hello   {{ name }} from {{ city | default('somewhere') }}\t</p>\n.\n"
            '<p><a href="{{ unsubscribe_url }}">unsubscribe</a></p>' + "<p>filler line</p>\n" * 40
        ),
        from_email="news@skylark.test",
        from_name="Skylark 新闻",
        reply_to="help@skylark.test",
    )

    celery_worker_factory(EDM_SMTP_URL=smtp_server.url, EDM_SMTP_TLS_CA_FILE=smtp_server.ca_file)
    campaign_send(campaign_id=campaign.pk)
    smtp_server.wait_for_messages(len(RECIPIENTS), timeout=60)
    wait_until(
        lambda: Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.SENT,
        timeout=30,
        what="the campaign to be marked sent",
    )

    queried = []

    def dns(name: bytes, timeout: int = 5) -> bytes:
        queried.append(name)
        return record["txt"].encode() if name == (record["dns_name"] + ".").encode() else b""

    received = smtp_server.messages
    assert sorted(m.rcpt_tos[0] for m in received) == sorted(r[0] for r in RECIPIENTS)
    for message in received:
        data = message.data
        assert data.startswith(b"DKIM-Signature: v=1; a=" + algorithm.encode() + b"-sha256;")
        assert b" d=skylark.test; s=e2e;" in data.split(b"\r\n\r\n")[0]
        assert dkimpy.verify(data, dnsfunc=dns), message.rcpt_tos
        # And a relay touching the body breaks it: the verification is not vacuous.
        assert not dkimpy.verify(data.replace(b"filler", b"fi11er", 1), dnsfunc=dns)
    assert set(queried) == {b"e2e._domainkey.skylark.test."}
