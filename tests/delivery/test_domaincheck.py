"""Sender domain check against a DNS server the test starts (dnspython's message API, UDP)."""

from __future__ import annotations

import json
import socket
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from django.core.management import call_command

from delivery.models import DkimKey
from delivery.monitor.domaincheck import DkimSelector, check_domain, make_resolver

KEY = "MCowBQYDK2VwAyEAq1OZk0mRqJ5rHyB4mQzvZ2yWc0l1S2aJ0X9w1yq2b3c="


class TinyDns:
    """Answers TXT queries from a dict; NXDOMAIN for names it does not know."""

    def __init__(self, zone: dict[str, list[str]]) -> None:
        self.zone = {name.lower().rstrip("."): records for name, records in zone.items()}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            if name not in self.zone:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.TXT:
                texts = []
                for text in self.zone[name]:
                    # Long values as several strings, as real zones publish them.
                    chunks = [text[i : i + 255] for i in range(0, len(text), 255)]
                    texts.append(" ".join(f'"{c}"' for c in chunks))
                response.answer.append(
                    dns.rrset.from_text_list(question.name, 300, "IN", "TXT", texts)
                )
            self.sock.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def dns_server():
    servers = []

    def start(zone):
        server = TinyDns(zone)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def severities(report, record):
    return [f.severity for f in report.findings if f.record == record]


def test_a_well_configured_domain_is_ok(dns_server):
    server = dns_server(
        {
            "shop.test": ["v=spf1 ip4:192.0.2.1 include:_spf.provider.test ~all", "google-site=x"],
            "sky._domainkey.shop.test": [f"v=DKIM1; k=ed25519; p={KEY}"],
            "_dmarc.shop.test": ["v=DMARC1; p=quarantine; rua=mailto:d@shop.test"],
        }
    )
    report = check_domain(
        "shop.test",
        selectors=[DkimSelector("sky", "ed25519", KEY)],
        resolver=make_resolver([server.address]),
    )
    assert report.ok, report.findings
    assert report.spf == ["v=spf1 ip4:192.0.2.1 include:_spf.provider.test ~all"]
    assert severities(report, "dkim:sky") == ["ok"]
    assert severities(report, "dmarc") == ["ok"]


def test_missing_records_say_what_to_publish(dns_server):
    server = dns_server({"bare.test": ["unrelated"]})
    report = check_domain(
        "bare.test",
        selectors=[DkimSelector("sky", "ed25519", KEY)],
        resolver=make_resolver([server.address]),
    )
    assert not report.ok
    by_record = {f.record: f for f in report.findings}
    assert by_record["spf"].publish_name == "bare.test"
    assert by_record["spf"].publish_value.startswith("v=spf1")
    assert by_record["dkim:sky"].publish_name == "sky._domainkey.bare.test"
    assert by_record["dkim:sky"].publish_value == f"v=DKIM1; k=ed25519; p={KEY}"
    assert by_record["dmarc"].publish_name == "_dmarc.bare.test"
    assert by_record["dmarc"].publish_value.startswith("v=DMARC1; p=none")


def test_long_dkim_key_split_into_strings_is_joined(dns_server):
    long_key = "A" * 400
    server = dns_server({"rsa._domainkey.big.test": [f"v=DKIM1; k=rsa; p={long_key}"]})
    report = check_domain(
        "big.test",
        selectors=[DkimSelector("rsa", "rsa", long_key)],
        resolver=make_resolver([server.address]),
    )
    assert severities(report, "dkim:rsa") == ["ok"]


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (["v=spf1 +all"], "+all"),
        (["v=spf1 a ~all", "v=spf1 mx ~all"], "2 SPF records"),
        (["v=spf1 " + " ".join(f"include:s{i}.test" for i in range(11)) + " -all"], "lookup"),
    ],
)
def test_spf_errors(dns_server, records, message):
    server = dns_server({"spf.test": records})
    report = check_domain("spf.test", resolver=make_resolver([server.address]))
    assert any(f.severity == "error" and message in f.message for f in report.findings)


def test_wrong_or_revoked_dkim_key(dns_server):
    server = dns_server(
        {
            "old._domainkey.k.test": ["v=DKIM1; k=ed25519; p=OTHERKEY"],
            "gone._domainkey.k.test": ["v=DKIM1; p="],
        }
    )
    resolver = make_resolver([server.address])
    report = check_domain(
        "k.test",
        selectors=[DkimSelector("old", "ed25519", KEY), DkimSelector("gone", "ed25519", KEY)],
        resolver=resolver,
    )
    messages = {f.record: f.message for f in report.findings}
    assert "not the one Skylark signs with" in messages["dkim:old"]
    assert "revoked" in messages["dkim:gone"]


def test_dmarc_none_is_informational(dns_server):
    server = dns_server({"m.test": ["v=spf1 -all"], "_dmarc.m.test": ["v=DMARC1; p=none"]})
    report = check_domain("m.test", resolver=make_resolver([server.address]))
    assert severities(report, "dmarc") == ["ok", "info", "info"]


def test_domain_check_command_uses_dkim_keys_and_edm_dns_servers(dns_server, db, settings, capsys):
    key = DkimKey(domain="cmd.test", selector="sky", algorithm="ed25519", public_key=KEY)
    key.private_key_encrypted = "unused"
    key.save()
    server = dns_server(
        {
            "cmd.test": ["v=spf1 mx -all"],
            "_dmarc.cmd.test": ["v=DMARC1; p=reject; rua=mailto:x@cmd.test"],
        }
    )
    settings.EDM_DNS_SERVERS = [server.address]
    with pytest.raises(SystemExit):
        call_command("domain_check", "cmd.test", "--json")
    payload = json.loads(capsys.readouterr().out)
    assert payload["ok"] is False
    [dkim] = [f for f in payload["findings"] if f["record"] == "dkim:sky"]
    assert dkim["publish_name"] == "sky._domainkey.cmd.test"
    assert dkim["publish_value"] == f"v=DKIM1; k=ed25519; p={KEY}"
