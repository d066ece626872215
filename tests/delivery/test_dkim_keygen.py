"""`manage.py dkim_keygen`: a stored, encrypted key and the TXT record that verifies it."""

import io
import json

import dkim as dkimpy
import pytest
from django.core.management import CommandError, call_command

from delivery.models import DkimKey
from delivery.selectors import dkim_signer_for


def _keygen(*args: str) -> str:
    out = io.StringIO()
    call_command("dkim_keygen", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_creates_an_encrypted_key_whose_record_verifies_signatures(algorithm):
    out = _keygen("News.Example.COM", "--selector", "s2024", "--algorithm", algorithm, "--json")
    record = json.loads(out)
    assert record["domain"] == "news.example.com"
    assert record["selector"] == "s2024"
    assert record["dns_name"] == "s2024._domainkey.news.example.com"
    assert record["txt"].startswith(f"v=DKIM1; k={algorithm}; p=")

    key = DkimKey.objects.get(domain="news.example.com", selector="s2024")
    assert key.algorithm == algorithm and key.enabled
    assert b"PRIVATE KEY" not in key.private_key_encrypted.encode()
    assert key.get_private_key().startswith(b"-----BEGIN PRIVATE KEY-----")

    signer = dkim_signer_for("news.example.com")
    message = b"From: a@news.example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
    signed = signer.sign(message)

    def dns(name, timeout=5):
        assert name == b"s2024._domainkey.news.example.com."
        return record["txt"].encode()

    assert dkimpy.verify(signed, dnsfunc=dns)


@pytest.mark.django_db
def test_human_output_names_the_record_and_splits_long_values():
    out = _keygen("example.com")
    assert "skylark._domainkey.example.com" in out
    txt = DkimKey.objects.get(domain="example.com").public_key
    assert txt in out.replace('" "', "")  # an RSA-2048 record is also shown split
    assert "255" in out


@pytest.mark.django_db
def test_refuses_an_existing_selector_unless_forced():
    first = json.loads(_keygen("example.com", "--json"))
    with pytest.raises(CommandError, match="already has a key"):
        _keygen("example.com", "--json")
    assert DkimKey.objects.get().public_key in first["txt"]

    second = json.loads(_keygen("example.com", "--force", "--algorithm", "ed25519", "--json"))
    key = DkimKey.objects.get()
    assert second["txt"] != first["txt"]
    assert key.algorithm == "ed25519" and key.public_key in second["txt"]
    # Another selector on the same domain is fine without --force.
    _keygen("example.com", "--selector", "s2", "--json")
    assert DkimKey.objects.count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args", [("bad domain.com",), ("exa\r\nmple.com",), ("example.com", "--selector", "a b")]
)
def test_rejects_invalid_domains_and_selectors(args):
    with pytest.raises(CommandError, match="invalid"):
        _keygen(*args, "--json")
    assert not DkimKey.objects.exists()
