"""DKIM signatures verified by dkimpy, an independent implementation.

dkimpy verifies Ed25519 with PyNaCl (a dev dependency), unmodified.
"""

import dkim as dkimpy
import pytest

from mailkit.compose import Composer, MessageSpec, make_message_id
from mailkit.dkim import DkimSigner, dkim_txt_record, generate_dkim_key
from mailkit.errors import DkimError
from mailkit.render import RenderedContent


@pytest.fixture(scope="module", params=["rsa", "ed25519"])
def key(request):
    pem, public = generate_dkim_key(algorithm=request.param)
    return request.param, pem, dkim_txt_record(algorithm=request.param, public_key_b64=public)


def _message(subject: str, html: str) -> bytes:
    composer = Composer(
        MessageSpec(
            from_email="news@example.com",
            from_name="张三 的商店 Shop",
            reply_to="help@example.com",
            list_id="Newsletter <newsletter.42.example.com>",
            campaign_id=42,
        )
    )
    return composer.compose(
        to_email="bob@example.org",
        to_name="李四 " * 20,
        content=RenderedContent(subject=subject, html=html, text="Hi  there \t\n.\n\n\n"),
        message_id=make_message_id(domain="example.com", delivery_id=9),
        unsubscribe_url="https://example.com/u/" + "x" * 200,
        unsubscribe_mailto="unsubscribe@example.com",
        delivery_reference="9.abcdefghijklmnop",
    )


def _verify(signed: bytes, record: str) -> bool:
    return dkimpy.verify(signed, dnsfunc=lambda name, timeout=5: record.encode())


def test_signature_verifies_with_chinese_subject_and_long_folded_headers(key):
    algorithm, pem, record = key
    message = _message("你好，张三！" * 12, "<p>Hello   world\t</p>\n" * 50)
    signed = DkimSigner(domain="example.com", selector="s1", private_key_pem=pem).sign(message)
    assert signed.startswith(b"DKIM-Signature: v=1; a=")
    assert (b"a=ed25519-sha256" in signed) == (algorithm == "ed25519")
    assert _verify(signed, record)


def test_tampered_body_fails_verification(key):
    _algorithm, pem, record = key
    signed = DkimSigner(domain="example.com", selector="s1", private_key_pem=pem).sign(
        _message("Offer", "<p>Price: 10 EUR</p>")
    )
    assert _verify(signed, record)
    assert not _verify(signed.replace(b"10 EUR", b"99 EUR"), record)


def test_tampered_subject_fails_verification(key):
    _algorithm, pem, record = key
    signed = DkimSigner(domain="example.com", selector="s1", private_key_pem=pem).sign(
        _message("Offer", "<p>x</p>")
    )
    assert not _verify(signed.replace(b"Subject: Offer", b"Subject: 0ffer"), record)


def test_only_present_headers_are_signed_and_from_always():
    pem, _ = generate_dkim_key(algorithm="ed25519")
    signer = DkimSigner(domain="example.com", selector="s1", private_key_pem=pem, headers=("To",))
    signed = signer.sign(b"From: a@example.com\r\nTo: b@example.org\r\n\r\nbody\r\n")
    assert b"h=from:to;" in signed


def test_txt_record_format():
    pem, public = generate_dkim_key(algorithm="ed25519")
    assert dkim_txt_record(algorithm="ed25519", public_key_b64=public) == (
        f"v=DKIM1; k=ed25519; p={public}"
    )
    assert len(public) == 44  # raw 32-byte key (RFC 8463), not SubjectPublicKeyInfo


def test_bad_key_is_rejected():
    with pytest.raises(DkimError):
        DkimSigner(domain="example.com", selector="s1", private_key_pem=b"not a key")
    with pytest.raises(DkimError):
        DkimSigner(domain="example.com", selector="bad selector", private_key_pem=b"x")
