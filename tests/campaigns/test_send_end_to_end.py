"""End to end: CSV import, a real Celery worker on real Redis, a scripted SMTP server.

Every outcome must match the server's script, no recipient may get two messages, and the
bytes on the wire must be right.
"""

from __future__ import annotations

import io
import json
import re
from email import message_from_bytes
from email.policy import default as default_policy
from email.policy import strict as strict_policy

import pytest
from django.conf import settings
from django.core.management import call_command

from campaigns.models import Campaign, CampaignStatus
from campaigns.services import campaign_create, campaign_send
from contacts.models import Contact, ContactStatus, Suppression
from delivery import tokens
from delivery.models import Delivery, DeliveryEvent
from mailkit.compose import message_id_delivery
from mailkit.verp import verp_parse
from tests.worker import wait_until

CSV = """email,name,city
ok@example.com,Alice,Paris
zhang@example.cn,张伟,北京
dead@example.com,Dead Address,
blocked@example.com,Blocked By Policy,
busy@example.com,Busy Mailbox,
dropped@example.com,Dropped Connection,
not-an-address,Broken Row,
OK@example.com,Duplicate In Other Case,
"""

SUBJECT = "{{ name | default('朋友') }}，春季新品 – spring news"


@pytest.fixture
def campaign_setup(transactional_db, tmp_path, smtp_server, settings):
    path = tmp_path / "contacts.csv"
    path.write_text(CSV, encoding="utf-8")
    out = io.StringIO()
    call_command("import_contacts", str(path), "--list", "E2E", "--json", stdout=out)
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    campaign = campaign_create(
        name="E2E",
        list_names=["E2E"],
        subject=SUBJECT,
        html=(
            "<p>Hello {{ name }} from {{ city | default('somewhere') }}</p>\n.\n"
            '<p><a href="{{ unsubscribe_url }}">unsubscribe</a></p>'
        ),
        from_email="news@skylark.test",
        from_name="Skylark 新闻",
    )
    return summary, campaign


def test_campaign_outcomes_match_the_smtp_script(
    campaign_setup, smtp_server, celery_worker_factory
):
    summary, campaign = campaign_setup
    assert summary["created"] == 6
    assert summary["rejected"] == 2  # the invalid address and the duplicate in other case
    assert not Contact.objects.filter(email__iexact="not-an-address").exists()

    smtp_server.script(
        "rcpt", "550 5.1.1 <dead@example.com>: no such user", recipient="dead@example.com"
    )
    smtp_server.script(
        "rcpt", "550 5.7.1 Message rejected by policy", recipient="blocked@example.com"
    )
    smtp_server.script(
        "rcpt", "450 4.2.0 Mailbox busy, try later", recipient="busy@example.com", times=1
    )
    smtp_server.script("data", recipient="dropped@example.com", drop_after_bytes=200, times=1)

    celery_worker_factory(EDM_SMTP_URL=smtp_server.url, EDM_SMTP_TLS_CA_FILE=smtp_server.ca_file)
    campaign_send(campaign_id=campaign.pk)

    def finished() -> bool:
        campaign.refresh_from_db()
        return campaign.status == CampaignStatus.SENT

    wait_until(finished, timeout=90, what="the campaign to finish")

    outcomes = dict(Delivery.objects.filter(campaign=campaign).values_list("email", "status"))
    assert outcomes == {
        "ok@example.com": "sent",
        "zhang@example.cn": "sent",
        "dead@example.com": "bounced",
        "blocked@example.com": "failed",
        "busy@example.com": "sent",
        "dropped@example.com": "sent",
    }
    attempts = dict(Delivery.objects.filter(campaign=campaign).values_list("email", "attempts"))
    assert attempts["busy@example.com"] == 2
    assert attempts["dropped@example.com"] == 2
    assert attempts["ok@example.com"] == 1
    busy = Delivery.objects.get(campaign=campaign, email="busy@example.com")
    kinds = list(busy.events.values_list("kind", flat=True))
    assert kinds == ["deferred", "sent"]
    assert "450" in busy.events.first().detail

    # A dead address is suppressed and the contact marked bounced; a policy block is not.
    assert Suppression.objects.filter(value="dead@example.com").exists()
    assert not Suppression.objects.filter(value="blocked@example.com").exists()
    assert Contact.objects.get(email="dead@example.com").status == ContactStatus.BOUNCED
    assert Contact.objects.get(email="blocked@example.com").status == ContactStatus.ACTIVE

    # No recipient got two messages.
    received = smtp_server.messages
    recipients = [rcpt for message in received for rcpt in message.rcpt_tos]
    assert sorted(recipients) == sorted(
        ["ok@example.com", "zhang@example.cn", "busy@example.com", "dropped@example.com"]
    )
    assert all(message.tls and message.auth_user == "skylark" for message in received)
    assert DeliveryEvent.objects.filter(delivery__campaign=campaign, kind="sent").count() == 4


def test_bytes_on_the_wire(campaign_setup, smtp_server, celery_worker_factory):
    _, campaign = campaign_setup
    celery_worker_factory(EDM_SMTP_URL=smtp_server.url, EDM_SMTP_TLS_CA_FILE=smtp_server.ca_file)
    campaign_send(campaign_id=campaign.pk)
    smtp_server.wait_for_messages(6, timeout=60)
    wait_until(
        lambda: Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.SENT,
        timeout=30,
        what="the campaign to be marked sent",
    )

    by_rcpt = {m.rcpt_tos[0]: m for m in smtp_server.messages}
    wire = by_rcpt["zhang@example.cn"]
    data = wire.data
    # CRLF only: no bare LF, no bare CR.
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert data.isascii() or b"\r\n\r\n" in data

    message = message_from_bytes(data, policy=default_policy)
    assert message["Subject"] == "张伟，春季新品 – spring news"
    assert message["From"].addresses[0].display_name == "Skylark 新闻"
    assert message["From"].addresses[0].addr_spec == "news@skylark.test"
    assert message["To"].addresses[0].addr_spec == "zhang@example.cn"
    assert message["To"].addresses[0].display_name == "张伟"
    assert re.fullmatch(r"<[^<>@\s]+@skylark\.test>", message["Message-ID"])
    assert message["Date"]
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "multipart/alternative"
    parts = [part.get_content_type() for part in message.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    html = message.get_body(("html",)).get_content()
    assert "Hello 张伟 from 北京" in html
    # A line holding a single dot survived SMTP dot-stuffing.
    assert "\n.\n" in html.replace("\r\n", "\n")
    unsubscribe = message["List-Unsubscribe"]
    assert f"<{settings.EDM_PUBLIC_URL}/u/" in unsubscribe
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    delivery = Delivery.objects.get(campaign=campaign, email="zhang@example.cn")
    # Signed references (issue 14.1): the header, the ENVID and the Message-ID's last part.
    assert message["X-Skylark-Delivery"] == tokens.delivery_reference(delivery.pk)
    assert message_id_delivery(message["Message-ID"], secret=tokens.message_id_secret()) == (
        delivery.pk
    )
    mailto = next(p for p in unsubscribe.split(",") if "mailto:" in p).strip(" <>")
    address = mailto.removeprefix("mailto:").partition("?")[0]
    assert tokens.unsubscribe_mailto_parse(address) == delivery.pk
    assert message["X-Skylark-Campaign"] == str(campaign.pk)
    assert delivery.message_id == message["Message-ID"]
    # The envelope: a VERP return path naming this delivery, DSN parameters.
    assert verp_parse(wire.mail_from, secret=settings.SECRET_KEY) == delivery.pk
    assert wire.mail_from.endswith("@" + settings.EDM_BOUNCE_DOMAIN)
    envid = next(o for o in wire.mail_options if o.upper().startswith("ENVID=")).split("=", 1)[1]
    assert tokens.delivery_from_reference(envid) == delivery.pk
    assert any("NOTIFY=FAILURE,DELAY" in option.upper() for option in wire.rcpt_options)
    # The strict parser finds no defect.
    strict = message_from_bytes(data, policy=strict_policy)
    assert not strict.defects
    assert all(not part.defects for part in strict.walk())
