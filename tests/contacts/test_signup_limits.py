"""Sign-up mail bombing: real HTTP posts against the real SMTP server and Redis; the mails
counted are the ones the SMTP server received (per mailbox, in all, per client IP, through
trusted and untrusted proxies, IPv6, concurrent posts)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import F
from django.test import Client

from config.client_ip import client_ip
from contacts.models import (
    ConsentRecord,
    SignupForm,
    SignupMailQuota,
    Subscription,
    SubscriptionStatus,
)
from tests.factories import ContactFactory, ContactListFactory, SubscriptionFactory

VICTIM = "victim@example.org"


@pytest.fixture
def smtp_settings(settings, smtp_server, celery_eager):
    settings.EDM_SMTP_URL = smtp_server.url
    settings.EDM_SMTP_TLS_CA_FILE = smtp_server.ca_file
    settings.EDM_SMTP_TIMEOUT_SECONDS = 5
    return smtp_server


def _form() -> SignupForm:
    return SignupForm.objects.create(
        contact_list=ContactListFactory(name="Newsletter"),
        title="Join our newsletter",
        from_email="hello@skylark.test",
    )


@pytest.fixture
def signup_form(db, redis_client):
    return _form()


def _post(form, captured, email, *, ip="203.0.113.7", **extra):
    client = Client(REMOTE_ADDR=ip, **extra)
    with captured(execute=True):
        return client.post(f"/subscribe/{form.public_token}/", {"email": email})


def _settle(server, count: int) -> list:
    """The messages the SMTP server has, once ``count`` arrived and nothing more came."""
    server.wait_for_messages(count)
    time.sleep(0.3)
    return server.messages


def _age_quotas(hours: float) -> None:
    SignupMailQuota.objects.update(window_start=F("window_start") - timedelta(hours=hours))


# --- per mailbox ---------------------------------------------------------------------------


def test_one_confirmation_per_mailbox_per_day_whatever_the_spelling(
    signup_form, smtp_settings, django_capture_on_commit_callbacks
):
    spellings = [
        "victim@gmail.com",
        "Victim@Gmail.com",
        "VICTIM@GMAIL.COM",
        "vic.tim@gmail.com",
        "v.i.c.t.i.m@googlemail.com",
        "victim+1@gmail.com",
        "victim+newsletter@gmail.com",
        "Vic.Tim+x@googlemail.com",
    ]
    # From a different address each time: the per-IP limit is not what stops this.
    responses = [
        _post(signup_form, django_capture_on_commit_callbacks, email, ip=f"198.51.100.{i}")
        for i, email in enumerate(spellings * 2)
    ]
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1  # the visitor cannot tell them apart
    messages = _settle(smtp_settings, 1)
    assert [m.rcpt_tos for m in messages] == [("victim@gmail.com",)]


def test_a_repeat_gives_the_same_answer_and_no_mail_then_the_mail_again_after_a_day(
    signup_form, smtp_settings, django_capture_on_commit_callbacks
):
    subscribed = ContactFactory(email="known@example.org")
    SubscriptionFactory(contact=subscribed, contact_list=signup_form.contact_list)
    first = _post(signup_form, django_capture_on_commit_callbacks, VICTIM, ip="198.51.100.1")
    again = _post(signup_form, django_capture_on_commit_callbacks, VICTIM, ip="198.51.100.2")
    known = _post(
        signup_form, django_capture_on_commit_callbacks, "known@example.org", ip="198.51.100.3"
    )
    assert first.status_code == again.status_code == known.status_code == 200
    assert first.content == again.content == known.content
    assert len(_settle(smtp_settings, 1)) == 1

    _age_quotas(23)  # still within the day: nothing
    _post(signup_form, django_capture_on_commit_callbacks, VICTIM, ip="198.51.100.4")
    assert len(_settle(smtp_settings, 1)) == 1
    _age_quotas(1.1)  # the day is over: the person who lost the mail gets it again
    _post(signup_form, django_capture_on_commit_callbacks, VICTIM, ip="198.51.100.5")
    messages = _settle(smtp_settings, 2)
    assert [m.rcpt_tos for m in messages] == [(VICTIM,), (VICTIM,)]
    assert Subscription.objects.get(contact__email=VICTIM).status == SubscriptionStatus.UNCONFIRMED


def test_the_per_mailbox_limit_is_configurable(
    signup_form, smtp_settings, settings, django_capture_on_commit_callbacks
):
    settings.EDM_SIGNUP_CONFIRMATIONS_PER_ADDRESS_PER_DAY = 3
    for i in range(6):
        _post(signup_form, django_capture_on_commit_callbacks, VICTIM, ip=f"198.51.100.{i}")
    assert len(_settle(smtp_settings, 3)) == 3


def test_a_confirmation_the_smtp_server_refused_is_not_counted(
    signup_form, smtp_settings, django_capture_on_commit_callbacks
):
    smtp_settings.script("rcpt", "451 4.3.0 try later", times=1)
    _post(signup_form, django_capture_on_commit_callbacks, VICTIM, ip="198.51.100.1")
    assert not smtp_settings.messages
    _post(signup_form, django_capture_on_commit_callbacks, VICTIM, ip="198.51.100.2")
    assert len(_settle(smtp_settings, 1)) == 1
    _post(signup_form, django_capture_on_commit_callbacks, VICTIM, ip="198.51.100.3")
    assert len(_settle(smtp_settings, 1)) == 1


# --- concurrent posts ----------------------------------------------------------------------


def _post_together(form, emails: list[str]) -> list:
    """Post every address at the same moment, each from its own thread, connection and IP."""
    barrier = threading.Barrier(len(emails))
    responses: list = [None] * len(emails)

    def post(i: int, email: str) -> None:
        try:
            client = Client(REMOTE_ADDR=f"198.51.100.{i + 1}")
            barrier.wait()
            responses[i] = client.post(f"/subscribe/{form.public_token}/", {"email": email})
        finally:
            connection.close()

    threads = [threading.Thread(target=post, args=(i, e)) for i, e in enumerate(emails)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return responses


@pytest.mark.django_db(transaction=True)
def test_concurrent_posts_for_one_mailbox_send_one_mail(redis_client, smtp_settings):
    form = _form()
    same = ["victim@gmail.com"] * 6
    variants = [
        "vic.tim@gmail.com",
        "victim+a@gmail.com",
        "Victim@googlemail.com",
        "v.ictim@gmail.com",
    ]
    responses = _post_together(form, same + variants)
    assert [r.status_code for r in responses] == [200] * 10
    assert len(_settle(smtp_settings, 1)) == 1
    assert SignupMailQuota.objects.filter(key__startswith="mailbox:").get().count == 1
    # A day later the quota rows exist already: the row lock, not the unique key, decides.
    _age_quotas(25)
    redis_client.flushdb()
    responses = _post_together(form, variants + same)
    assert [r.status_code for r in responses] == [200] * 10
    assert len(_settle(smtp_settings, 2)) == 2


# --- all forms together --------------------------------------------------------------------


def test_the_global_cap_stops_confirmations_and_says_so_to_everyone_alike(
    signup_form, smtp_settings, settings, django_capture_on_commit_callbacks
):
    settings.EDM_SIGNUP_CONFIRMATIONS_PER_HOUR = 3
    other_form = _form()  # the cap is for all forms together
    for i in range(3):
        form = signup_form if i % 2 else other_form
        response = _post(
            form, django_capture_on_commit_callbacks, f"p{i}@example.org", ip=f"198.51.100.{i}"
        )
        assert response.status_code == 200
    assert len(_settle(smtp_settings, 3)) == 3
    ContactFactory(email="known@example.org")
    new = _post(
        signup_form, django_capture_on_commit_callbacks, "new@example.org", ip="198.51.100.9"
    )
    known = _post(
        signup_form, django_capture_on_commit_callbacks, "known@example.org", ip="198.51.100.8"
    )
    assert new.status_code == known.status_code == 503
    assert new.content == known.content and b"try again later" in new.content
    assert 3500 < int(new["Retry-After"]) <= 3600
    assert len(_settle(smtp_settings, 3)) == 3
    _age_quotas(1.01)
    assert (
        _post(signup_form, django_capture_on_commit_callbacks, "new@example.org").status_code == 200
    )
    assert len(_settle(smtp_settings, 4)) == 4


def test_the_daily_global_cap(
    signup_form, smtp_settings, settings, django_capture_on_commit_callbacks
):
    settings.EDM_SIGNUP_CONFIRMATIONS_PER_DAY = 2
    codes = [
        _post(
            signup_form,
            django_capture_on_commit_callbacks,
            f"d{i}@example.org",
            ip=f"198.51.100.{i}",
        ).status_code
        for i in range(4)
    ]
    assert codes == [200, 200, 503, 503]
    assert len(_settle(smtp_settings, 2)) == 2


# --- per client IP -------------------------------------------------------------------------


def test_one_ip_is_limited_per_day_too(signup_form, settings, django_capture_on_commit_callbacks):
    signup_form.double_opt_in = False
    signup_form.save()
    settings.EDM_SIGNUP_RATE_PER_MINUTE = 1000
    settings.EDM_SIGNUP_RATE_PER_DAY = 5
    codes = [
        _post(signup_form, django_capture_on_commit_callbacks, f"r{i}@x.org").status_code
        for i in range(7)
    ]
    assert codes == [200] * 5 + [429] * 2
    limited = _post(signup_form, django_capture_on_commit_callbacks, "late@x.org")
    assert 0 < int(limited["Retry-After"]) <= 86400 and b"today" in limited.content
    assert (
        _post(
            signup_form, django_capture_on_commit_callbacks, "o@x.org", ip="198.51.100.1"
        ).status_code
        == 200
    )


def test_an_ipv6_client_is_counted_by_its_64(signup_form, django_capture_on_commit_callbacks):
    signup_form.double_opt_in = False
    signup_form.save()
    codes = [
        _post(
            signup_form,
            django_capture_on_commit_callbacks,
            f"r{i}@x.org",
            ip=f"2001:db8:1:2::{i + 1:x}",
        ).status_code
        for i in range(11)
    ]
    assert codes == [200] * 10 + [429]
    other = _post(signup_form, django_capture_on_commit_callbacks, "o@x.org", ip="2001:db8:1:3::1")
    assert other.status_code == 200


# --- the client's address behind proxies ---------------------------------------------------


def test_a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(
    signup_form, django_capture_on_commit_callbacks
):
    signup_form.double_opt_in = False
    signup_form.save()
    codes = [
        _post(
            signup_form,
            django_capture_on_commit_callbacks,
            f"s{i}@x.org",
            HTTP_X_FORWARDED_FOR=f"192.0.2.{i}",
        ).status_code
        for i in range(11)
    ]
    assert codes == [200] * 10 + [429]
    assert set(ConsentRecord.objects.values_list("ip", flat=True)) == {"203.0.113.7"}


def test_visitors_behind_a_trusted_proxy_each_have_their_own_limit(
    signup_form, settings, django_capture_on_commit_callbacks
):
    signup_form.double_opt_in = False
    signup_form.save()
    settings.EDM_TRUSTED_PROXIES = ["10.0.0.0/8"]
    # Fifteen visitors through a load balancer (10.0.0.2) and an nginx (10.0.0.5): none shares.
    for i in range(15):
        response = _post(
            signup_form,
            django_capture_on_commit_callbacks,
            f"v{i}@x.org",
            ip="10.0.0.5",
            HTTP_X_FORWARDED_FOR=f"198.51.100.{i}, 10.0.0.2",
        )
        assert response.status_code == 200
    assert ConsentRecord.objects.filter(ip="198.51.100.14").count() == 1
    # One visitor who writes a new X-Forwarded-For of his own each time is still one visitor.
    codes = [
        _post(
            signup_form,
            django_capture_on_commit_callbacks,
            f"a{i}@x.org",
            ip="10.0.0.5",
            HTTP_X_FORWARDED_FOR=f"192.0.2.{i}, 203.0.113.66, 10.0.0.2",
        ).status_code
        for i in range(11)
    ]
    assert codes == [200] * 10 + [429]
    assert ConsentRecord.objects.filter(ip="203.0.113.66").count() == 10


@pytest.mark.parametrize(
    ("remote", "forwarded", "expected"),
    [
        ("203.0.113.7", "", "203.0.113.7"),
        ("203.0.113.7", "198.51.100.1", "203.0.113.7"),  # untrusted peer: never believed
        ("10.0.0.1", "", "10.0.0.1"),
        ("10.0.0.1", "198.51.100.1", "198.51.100.1"),
        ("10.0.0.1", "1.1.1.1, 198.51.100.1, 10.9.9.9", "198.51.100.1"),
        ("10.0.0.1", "198.51.100.1:5123", "198.51.100.1"),
        ("10.0.0.1", "not-an-ip, 198.51.100.1", "198.51.100.1"),
        ("10.0.0.1", "198.51.100.1, not-an-ip", "10.0.0.1"),  # a broken hop: the proxy
        ("10.0.0.1", "10.1.1.1, 10.2.2.2", "10.1.1.1"),  # all trusted: the first hop
        ("::ffff:10.0.0.1", "198.51.100.1", "198.51.100.1"),  # dual-stack socket
        ("2001:db8:ffff::1", "2001:db8:1::7", "2001:db8:1::7"),
        ("2001:db8:ffff::1", "[2001:db8:1::7]:443", "2001:db8:1::7"),
        ("2001:db8:ffff::1", "198.51.100.1, 2001:db8:1::7, 2001:db8:ffff::2", "2001:db8:1::7"),
        ("2001:db8:1::1", "198.51.100.1", "2001:db8:1::1"),  # outside the trusted /48
        ("", "198.51.100.1", "198.51.100.1"),  # a Unix-socket peer, trusted as "unix"
    ],
)
def test_client_ip(remote, forwarded, expected):
    meta = {"REMOTE_ADDR": remote, "HTTP_X_FORWARDED_FOR": forwarded}
    trusted = ["10.0.0.0/8", "2001:db8:ffff::/48", "unix"]
    assert client_ip(meta, trusted=trusted) == expected


def test_client_ip_without_trusted_proxies_and_a_padded_header():
    padded = ", ".join(["10.0.0.9"] * 10_000) + ", 198.51.100.1"
    assert client_ip({"REMOTE_ADDR": "", "HTTP_X_FORWARDED_FOR": "1.2.3.4"}, trusted=[]) == ""
    meta = {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": padded}
    assert client_ip(meta, trusted=["10.0.0.0/8"]) == "198.51.100.1"
    trusted_only = ", ".join(["10.0.0.9"] * 10_000)
    meta = {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.5, " + trusted_only}
    assert client_ip(meta, trusted=["10.0.0.0/8"]) == "10.0.0.9"  # past the hops it reads


def test_a_misspelt_trusted_proxy_stops_the_process():
    import os
    import subprocess
    import sys

    env = {**os.environ, "EDM_TRUSTED_PROXIES": "10.0.0.0/8,10.0.0.x"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and "EDM_TRUSTED_PROXIES" in result.stderr
