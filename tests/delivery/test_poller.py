"""The mailbox poller against a real Dovecot (IMAP and POP3), started per test in a tmp dir."""

from __future__ import annotations

import io
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.core.management import call_command

from delivery.intake.models import BounceMessage, Mailbox
from delivery.intake.poller import mailbox_poll
from delivery.models import DeliveryStatus
from tests.conftest import free_port
from tests.delivery.test_intake import make_auto_reply, make_dsn, make_sent_delivery, verp_of

DOVECOT = shutil.which("dovecot") or (
    "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None
)
USER, PASSWORD = "bounce", "secret"


@dataclass
class Dovecot:
    imap_port: int
    pop3_port: int
    maildir: Path
    uid: int
    gid: int
    tls: bool
    log: Path
    _count: int = 0

    def deliver(self, raw: bytes) -> Path:
        """Drop a message into the maildir as an MDA would (write in tmp/, rename into new/)."""
        self._count += 1
        name = f"{time.time_ns()}.{os.getpid()}_{self._count}.skylark-test"
        tmp = self.maildir / "tmp" / name
        tmp.write_bytes(raw)
        os.chown(tmp, self.uid, self.gid)
        final = self.maildir / "new" / name
        tmp.rename(final)
        return final

    def messages(self) -> list[Path]:
        return [p for sub in ("new", "cur") for p in (self.maildir / sub).iterdir()]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dovecot exited: {log.read_text() if log.exists() else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail("dovecot did not listen in time")


def _start_dovecot(*, tls_files=None) -> Iterator[Dovecot]:
    if DOVECOT is None:
        pytest.skip(
            "dovecot is not installed (apt-get install dovecot-imapd dovecot-pop3d, see .ci/run)"
        )
    # Not pytest's tmp_path: under root it is mode 0700, and Dovecot's unprivileged processes
    # must traverse it.
    with tempfile.TemporaryDirectory(prefix="skylark-dovecot-") as directory:
        yield from _run_dovecot(Path(directory), tls_files=tls_files)


def _run_dovecot(root: Path, *, tls_files=None) -> Iterator[Dovecot]:
    (root / "run").mkdir(parents=True)
    home = root / "home" / USER
    maildir = home / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    if os.geteuid() == 0:
        # As root, Dovecot's own unprivileged users run the login and mail processes.
        internal_user, login_user = "dovecot", "dovenull"
        mail = pwd.getpwnam("dovecot")
        for path in (root, root / "home"):
            path.chmod(0o755)
        for path in [home, *home.rglob("*")]:
            os.chown(path, mail.pw_uid, mail.pw_gid)
    else:
        # As an ordinary user, every Dovecot process runs as that user.
        mail = pwd.getpwuid(os.getuid())
        internal_user = login_user = mail.pw_name
    (root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::\n")
    imap_port, pop3_port = free_port(), free_port()
    if tls_files is not None:
        ssl_lines = (
            f"ssl = required\nssl_cert = <{tls_files.cert_file}\nssl_key = <{tls_files.key_file}\n"
        )
        imap_listener, pop3_listener = "imaps", "pop3s"
    else:
        ssl_lines = "ssl = no\n"
        imap_listener, pop3_listener = "imap", "pop3"
    log = root / "dovecot.log"
    conf = root / "dovecot.conf"
    conf.write_text(
        f"""
base_dir = {root}/run
state_dir = {root}/run/state
instance_name = skylark-test-{imap_port}
listen = 127.0.0.1
protocols = imap pop3
{ssl_lines}
disable_plaintext_auth = no
auth_mechanisms = plain login
log_path = {log}
default_internal_user = {internal_user}
default_login_user = {login_user}
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:{root}/home/%u/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/passwd
}}
userdb {{
  driver = static
  args = uid={mail.pw_uid} gid={mail.pw_gid} home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
  inet_listener {imap_listener} {{
    address = 127.0.0.1
    port = {imap_port}
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    port = 0
  }}
  inet_listener {pop3_listener} {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
service pop3-login {{
  chroot =
}}
"""
    )
    process = subprocess.Popen(
        [DOVECOT, "-F", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        _wait_for_port(imap_port, process, log)
        _wait_for_port(pop3_port, process, log)
        yield Dovecot(
            imap_port=imap_port,
            pop3_port=pop3_port,
            maildir=maildir,
            uid=mail.pw_uid,
            gid=mail.pw_gid,
            tls=tls_files is not None,
            log=log,
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    yield from _start_dovecot()


@pytest.fixture
def dovecot_tls(smtp_tls_files) -> Iterator[Dovecot]:
    yield from _start_dovecot(tls_files=smtp_tls_files)


def _mailbox(server: Dovecot, protocol: str, **fields) -> Mailbox:
    mailbox = Mailbox(
        name=f"bounces-{protocol}",
        protocol=protocol,
        host="127.0.0.1",
        port=server.imap_port if protocol == "imap" else server.pop3_port,
        security="tls" if server.tls else "none",
        username=USER,
        **fields,
    )
    mailbox.set_password(PASSWORD)
    mailbox.save()
    return mailbox


def _three_reports(server: Dovecot):
    deliveries = [make_sent_delivery(f"dead{i}@example.com") for i in range(2)]
    for i, delivery in enumerate(deliveries):
        server.deliver(make_dsn(recipient=delivery.email, to=verp_of(delivery), nonce=str(i)))
    holiday = make_sent_delivery("holiday@example.com")
    server.deliver(make_auto_reply(to=verp_of(holiday)))
    return deliveries


@pytest.mark.django_db
@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_each_message_is_ingested_once_and_nothing_is_deleted(dovecot, protocol):
    deliveries = _three_reports(dovecot)
    mailbox = _mailbox(dovecot, protocol)

    first = mailbox_poll(mailbox_id=mailbox.pk)
    assert first.error == ""
    assert (first.fetched, first.stored, first.deleted) == (3, 3, 0)
    second = mailbox_poll(mailbox_id=mailbox.pk)
    assert (second.fetched, second.stored) == (0, 0)

    assert BounceMessage.objects.filter(source=protocol).count() == 3
    assert sorted(BounceMessage.objects.values_list("status", flat=True)) == [
        "applied",
        "applied",
        "ignored",
    ]
    for delivery in deliveries:
        delivery.refresh_from_db()
        assert delivery.status == DeliveryStatus.BOUNCED
    assert len(dovecot.messages()) == 3  # nothing deleted
    mailbox.refresh_from_db()
    assert mailbox.last_polled_at is not None and mailbox.last_error == ""
    if protocol == "imap":
        assert mailbox.uidvalidity and mailbox.last_uid == 3
    else:
        assert len(mailbox.seen_uidls) == 3

    # A message that arrives later is read on the next poll, alone.
    late = make_sent_delivery("late@example.com")
    dovecot.deliver(make_dsn(recipient=late.email, to=verp_of(late), nonce="late"))
    third = mailbox_poll(mailbox_id=mailbox.pk)
    assert (third.fetched, third.stored) == (1, 1)
    assert BounceMessage.objects.count() == 4


@pytest.mark.django_db
def test_imap_does_not_mark_messages_seen(dovecot):
    _three_reports(dovecot)
    mailbox = _mailbox(dovecot, "imap")
    mailbox_poll(mailbox_id=mailbox.pk)
    # Maildir flags live in the file name (":2,S" for \Seen): a read-only poll sets none.
    assert not any(":2,S" in p.name or p.name.endswith("S") for p in dovecot.messages())


@pytest.mark.django_db
@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_delete_after_processing_removes_what_was_read(dovecot, protocol):
    _three_reports(dovecot)
    mailbox = _mailbox(dovecot, protocol, delete_after_processing=True)
    result = mailbox_poll(mailbox_id=mailbox.pk)
    assert (result.fetched, result.deleted) == (3, 3)
    assert dovecot.messages() == []
    assert BounceMessage.objects.count() == 3


@pytest.mark.django_db
def test_a_wrong_password_is_recorded_on_the_mailbox(dovecot):
    mailbox = _mailbox(dovecot, "imap")
    mailbox.set_password("wrong")
    mailbox.save()
    result = mailbox_poll(mailbox_id=mailbox.pk)
    assert result.error
    mailbox.refresh_from_db()
    assert "authentication" in mailbox.last_error.lower() or "login" in mailbox.last_error.lower()


@pytest.mark.django_db
def test_plain_text_login_to_a_remote_host_is_refused():
    mailbox = Mailbox(
        name="remote", host="imap.example.com", port=143, security="none", username="u"
    )
    mailbox.set_password("p")
    mailbox.save()
    result = mailbox_poll(mailbox_id=mailbox.pk)
    assert "loopback" in result.error


@pytest.mark.django_db
@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_polling_over_verified_tls(dovecot_tls, smtp_tls_files, settings, protocol):
    settings.EDM_MAILBOX_TLS_CA_FILE = smtp_tls_files.ca_file
    _three_reports(dovecot_tls)
    mailbox = _mailbox(dovecot_tls, protocol)
    result = mailbox_poll(mailbox_id=mailbox.pk)
    assert result.error == ""
    assert result.stored == 3

    # Against an unrelated CA the certificate does not verify: nothing is read.
    settings.EDM_MAILBOX_TLS_CA_FILE = smtp_tls_files.other_ca_file
    dovecot_tls.deliver(make_dsn(recipient="x@example.net", nonce="other"))
    failed = mailbox_poll(mailbox_id=mailbox.pk)
    assert "CERTIFICATE_VERIFY_FAILED" in failed.error
    assert BounceMessage.objects.count() == 3


@pytest.mark.django_db
def test_poll_bounces_command(dovecot):
    _three_reports(dovecot)
    mailbox = _mailbox(dovecot, "pop3")
    out = io.StringIO()
    call_command("poll_bounces", "--mailbox", str(mailbox.pk), stdout=out)
    assert "3 new" in out.getvalue()
    assert BounceMessage.objects.count() == 3
