"""A real, scripted, in-process SMTP server for tests (aiosmtpd in its own thread).

Loaded as a pytest plugin from tests/conftest.py. Fixtures:

- ``smtp_tls_files``: session-scoped test CA and a server certificate for localhost/127.0.0.1.
- ``smtp_server``: STARTTLS + AUTH (user "skylark", password "secret").
- ``smtp_server_factory(**options)``: any other configuration (see ``ScriptedSmtpServer``).

Each server records every accepted message as a frozen ``ReceivedMessage`` and every connection
as a ``ConnectionLog``, and follows a per-test script (``server.script(...)``) to refuse, defer,
stall or drop at a given stage. Everything runs in the server's own thread and event loop, so
sync tests (or a worker in another process) and async tests can use it alike.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import ipaddress
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

STAGES = ("connect", "ehlo", "mail", "rcpt", "data", "noop", "rset")
WAIT_TIMEOUT = 5.0


# --- certificates --------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """A test CA and a server certificate signed by it, as PEM files."""

    ca_file: str
    cert_file: str
    key_file: str
    other_ca_file: str  # an unrelated CA: verifying against it must fail


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_tls_files(directory: Path) -> TlsFiles:
    """Generate a CA, a localhost/127.0.0.1 server certificate and an unrelated CA."""
    ca_key, ca_cert = _make_ca("Skylark Test CA")
    _, other_ca_cert = _make_ca("Unrelated Test CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = {
        "ca_file": directory / "ca.pem",
        "cert_file": directory / "server.pem",
        "key_file": directory / "server.key",
        "other_ca_file": directory / "other-ca.pem",
    }
    paths["ca_file"].write_bytes(ca_cert.public_bytes(pem))
    paths["cert_file"].write_bytes(cert.public_bytes(pem))
    paths["key_file"].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths["other_ca_file"].write_bytes(other_ca_cert.public_bytes(pem))
    return TlsFiles(**{name: str(path) for name, path in paths.items()})


# --- records and script --------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedMessage:
    """One message the server accepted (replied 2xx after the final dot)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    mail_options: tuple[str, ...]
    rcpt_options: tuple[str, ...]
    auth_user: str | None
    peer: Any
    tls: bool
    connection_id: int


@dataclass
class ConnectionLog:
    """What one client connection did; ``commands`` holds verbs only (never AUTH secrets)."""

    id: int
    peer: Any
    commands: list[str] = field(default_factory=list)
    tls: bool = False
    auth_user: str | None = None
    messages: int = 0

    @property
    def greeted(self) -> bool:
        """True once the client sent EHLO or HELO (a real session, not a port probe)."""
        return "EHLO" in self.commands or "HELO" in self.commands


@dataclass
class Rule:
    """One scripted reaction: at ``stage``, for ``recipient`` (None: any), ``times`` times."""

    stage: str
    reply: str | bytes | None = None  # bytes: sent as given (a hostile server's NUL, bad UTF-8)
    recipient: str | None = None
    times: int | None = None  # None: forever
    stall: float = 0.0
    drop: bool = False
    drop_after_bytes: int | None = None
    used: int = 0


# --- the aiosmtpd server -------------------------------------------------------------------


class _ScriptedSMTP(SMTP):
    """aiosmtpd's SMTP with scripting hooks, DSN parameters and a per-connection log."""

    def __init__(self, scripted: ScriptedSmtpServer, handler: Any, **kwargs: Any) -> None:
        self._scripted = scripted
        self._greeted = False
        self._log: ConnectionLog | None = None
        super().__init__(handler, **kwargs)
        for verb, method in list(self._smtp_methods.items()):
            self._smtp_methods[verb] = self._logged(verb, method)

    def _logged(self, verb: str, method: Any) -> Any:
        @functools.wraps(method)
        async def wrapper(arg: str | None) -> None:
            if self._log is not None:
                # For AUTH keep only the mechanism: the rest may carry the password.
                entry = f"AUTH {(arg or '').split(' ')[0].upper()}" if verb == "AUTH" else verb
                self._log.commands.append(entry)
                self._log.tls = self.is_tls
            return await method(arg)

        return wrapper

    @property
    def is_tls(self) -> bool:
        return (
            self.transport is not None and self.transport.get_extra_info("ssl_object") is not None
        )

    @property
    def connection_log(self) -> ConnectionLog | None:
        return self._log

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and self._log is None
        super().connection_made(transport)
        if first:
            self._log = self._scripted._new_connection(transport.get_extra_info("peername"))
        if self._log is not None:
            self._log.tls = self.is_tls

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        result = super()._getparams(params)
        if result is not None and self._scripted.dsn:
            # RFC 3461 parameters: accepted (and recorded in mail/rcpt_options), not acted on.
            for name in ("RET", "ENVID", "NOTIFY", "ORCPT"):
                result.pop(name, None)
        return result

    def abort(self) -> None:
        """Drop the TCP connection without a word, as a crashing server would."""
        transport = self._original_transport or self.transport
        if transport is not None:
            transport.abort()

    async def push(self, status: str | bytes) -> None:
        if not self._greeted:
            self._greeted = True
            rule = self._scripted._take("connect")
            if rule is not None:
                await self.apply(rule)
                if rule.reply:
                    status = rule.reply
        await super().push(status)
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        if text.startswith("421") and self.transport is not None:
            # RFC 5321 section 3.8: 421 means the server is closing the channel.
            self.transport.close()

    async def apply(self, rule: Rule) -> None:
        """Stall and/or drop as the rule says; the caller sends the reply, if any."""
        if rule.stall:
            await asyncio.sleep(rule.stall)
        if rule.drop:
            self.abort()
            await asyncio.Event().wait()  # cancelled by connection_lost()

    async def smtp_DATA(self, arg: str) -> None:
        envelope = self.envelope
        if self.session is not None and self.session.host_name and envelope and envelope.rcpt_tos:
            rule = self._scripted._take("data-transfer", envelope.rcpt_tos)
            if rule is not None:
                await self.push("354 End data with <CR><LF>.<CR><LF>")
                received = 0
                while received < (rule.drop_after_bytes or 0):
                    chunk = await self._reader.read((rule.drop_after_bytes or 0) - received)
                    if not chunk:
                        break
                    received += len(chunk)
                rule.drop = True
                await self.apply(rule)
        await super().smtp_DATA(arg)


class _Handler:
    """Recording handler: scripted replies at each stage, accepted messages recorded."""

    def __init__(self, scripted: ScriptedSmtpServer) -> None:
        self._scripted = scripted

    async def _scripted_reply(
        self, server: _ScriptedSMTP, stage: str, recipients: Sequence[str] = ()
    ) -> Any:
        rule = self._scripted._take(stage, recipients)
        if rule is None:
            return MISSING
        await server.apply(rule)
        return rule.reply or MISSING

    async def handle_EHLO(
        self, server: _ScriptedSMTP, session: Any, envelope: Any, hostname: str, responses: list
    ) -> list[str]:
        reply = await self._scripted_reply(server, "ehlo")
        if reply is not MISSING:
            return [reply]
        session.host_name = hostname
        if not self._scripted.eightbitmime:
            responses = [r for r in responses if r != "250-8BITMIME"]
        if self._scripted.dsn:
            responses.insert(-1, "250-DSN")
        return responses

    async def handle_NOOP(
        self, server: _ScriptedSMTP, session: Any, envelope: Any, arg: str
    ) -> Any:
        return await self._scripted_reply(server, "noop")

    async def handle_RSET(self, server: _ScriptedSMTP, session: Any, envelope: Any) -> Any:
        return await self._scripted_reply(server, "rset")

    async def handle_MAIL(
        self, server: _ScriptedSMTP, session: Any, envelope: Any, address: str, options: list
    ) -> Any:
        return await self._scripted_reply(server, "mail", (address,))

    async def handle_RCPT(
        self, server: _ScriptedSMTP, session: Any, envelope: Any, address: str, options: list
    ) -> Any:
        reply = await self._scripted_reply(server, "rcpt", (address,))
        if reply is MISSING:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
            return "250 2.1.5 OK"
        return reply

    async def handle_DATA(self, server: _ScriptedSMTP, session: Any, envelope: Any) -> str:
        reply = await self._scripted_reply(server, "data", envelope.rcpt_tos)
        if reply is not MISSING and reply[:1] not in ("2", b"2"):
            return reply
        log = server.connection_log
        message = ReceivedMessage(
            mail_from=envelope.mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=bytes(envelope.original_content),
            mail_options=tuple(envelope.mail_options),
            rcpt_options=tuple(envelope.rcpt_options),
            auth_user=log.auth_user if log else None,
            peer=session.peer,
            tls=server.is_tls,
            connection_id=log.id if log else -1,
        )
        number = self._scripted._record(message, log)
        return reply if reply is not MISSING else f"250 2.0.0 OK queued as {number}"


class _Controller(Controller):
    def __init__(self, scripted: ScriptedSmtpServer, handler: Any, **kwargs: Any) -> None:
        self._scripted = scripted
        super().__init__(handler, **kwargs)

    def factory(self) -> _ScriptedSMTP:
        return _ScriptedSMTP(self._scripted, self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # Bound to port 0: learn the real port before aiosmtpd's start-up probe connects.
        if self.port == 0 and self.server is not None:
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class ScriptedSmtpServer:
    """A scripted aiosmtpd server on 127.0.0.1 and a free port, in its own thread.

    Options: ``starttls`` (offer STARTTLS), ``implicit_tls`` (TLS on connect), ``users``
    (``{name: password}``; AUTH PLAIN and LOGIN), ``auth_require_tls`` (only offer AUTH over
    TLS), ``size`` (SIZE limit; 0 or None: not advertised), ``smtputf8``, ``eightbitmime``,
    ``dsn``.
    """

    def __init__(
        self,
        tls_files: TlsFiles,
        *,
        starttls: bool = True,
        implicit_tls: bool = False,
        users: dict[str, str] | None = None,
        auth_require_tls: bool = True,
        size: int | None = 10 * 1024 * 1024,
        smtputf8: bool = True,
        eightbitmime: bool = True,
        dsn: bool = True,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.ca_file = tls_files.ca_file
        self.tls_files = tls_files
        self.implicit_tls = implicit_tls
        self.starttls = starttls and not implicit_tls
        self.users = dict(users or {})
        self.dsn = dsn
        self.eightbitmime = eightbitmime
        self._lock = threading.Condition()
        self._rules: list[Rule] = []
        self._messages: list[ReceivedMessage] = []
        self._connections: list[ConnectionLog] = []

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_files.cert_file, tls_files.key_file)
        self._controller = _Controller(
            self,
            _Handler(self),
            hostname=self.host,
            port=0,
            ssl_context=context if implicit_tls else None,
            server_hostname="localhost",
            ready_timeout=WAIT_TIMEOUT,
            tls_context=context if self.starttls else None,
            authenticator=self._authenticate if self.users else None,
            # aiosmtpd only knows STARTTLS; with TLS on connect every session is encrypted.
            auth_require_tls=auth_require_tls and not implicit_tls,
            data_size_limit=size or None,
            enable_SMTPUTF8=smtputf8,
            timeout=30,
        )

    # lifecycle

    def start(self) -> ScriptedSmtpServer:
        self._controller.start()
        self.port = self._controller.port
        return self

    def stop(self) -> None:
        if self._controller._thread is not None:
            self._controller.stop()

    # client-side conveniences

    @property
    def security(self) -> str:
        if self.implicit_tls:
            return "tls"
        return "starttls" if self.starttls else "none"

    @property
    def url(self) -> str:
        """``smtp://user:pass@host:port?security=...`` for the first configured user."""
        credentials = ""
        if self.users:
            user, password = next(iter(self.users.items()))
            credentials = f"{quote(user, safe='')}:{quote(password, safe='')}@"
        return f"smtp://{credentials}{self.host}:{self.port}?security={self.security}"

    # script

    def script(
        self,
        stage: str,
        reply: str | bytes | None = None,
        *,
        recipient: str | None = None,
        times: int | None = None,
        stall: float = 0.0,
        drop: bool = False,
        drop_after_bytes: int | None = None,
    ) -> Rule:
        """Add a rule: at ``stage`` reply ``reply`` (after ``stall`` seconds) or ``drop``.

        ``recipient`` narrows a rule to one address (the sender at "mail"; any of the
        recipients at "data"). ``times`` limits how often it fires (then the default
        applies: e.g. ``times=2`` defers twice, then accepts). At "data", ``drop=True`` drops
        after the final dot, before replying; ``drop_after_bytes=N`` drops during DATA after
        N bytes of content. The first matching rule wins.
        """
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; one of {STAGES}")
        if drop_after_bytes is not None:
            if stage != "data":
                raise ValueError("drop_after_bytes only applies to the data stage")
            stage = "data-transfer"
        rule = Rule(stage, reply, recipient, times, stall, drop, drop_after_bytes)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_script(self) -> None:
        with self._lock:
            self._rules.clear()

    def _take(self, stage: str, addresses: Sequence[str] = ()) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.stage != stage:
                    continue
                if rule.recipient is not None and rule.recipient not in addresses:
                    continue
                if rule.times is not None and rule.used >= rule.times:
                    continue
                rule.used += 1
                return rule
        return None

    # records

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode(errors="replace")
            password = auth_data.password.decode(errors="replace")
            if self.users.get(login) == password:
                log = server.connection_log
                if log is not None:
                    log.auth_user = login
                return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)

    def _new_connection(self, peer: Any) -> ConnectionLog:
        with self._lock:
            log = ConnectionLog(id=len(self._connections) + 1, peer=peer)
            self._connections.append(log)
            return log

    def _record(self, message: ReceivedMessage, log: ConnectionLog | None) -> int:
        with self._lock:
            self._messages.append(message)
            if log is not None:
                log.messages += 1
            self._lock.notify_all()
            return len(self._messages)

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._lock:
            return list(self._messages)

    @property
    def connections(self) -> list[ConnectionLog]:
        """Client sessions (connections that sent EHLO/HELO; start-up probes excluded)."""
        with self._lock:
            return [log for log in self._connections if log.greeted]

    def commands(self, verb: str) -> list[str]:
        """Every logged command starting with ``verb`` over all connections."""
        with self._lock:
            return [c for log in self._connections for c in log.commands if c.startswith(verb)]

    def wait_for_messages(self, count: int, timeout: float = WAIT_TIMEOUT) -> list[ReceivedMessage]:
        """Wait until at least ``count`` messages arrived; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"expected {count} messages within {timeout}s, got {len(self._messages)}"
                    )
                self._lock.wait(remaining)
            return list(self._messages)

    def wait_for(self, predicate: Any, timeout: float = WAIT_TIMEOUT) -> None:
        """Poll ``predicate()`` (cheap, thread-safe reads) until true; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            time.sleep(0.01)


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smtp_tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("smtp-tls"))


@pytest.fixture
def smtp_server_factory(smtp_tls_files: TlsFiles) -> Iterator[Any]:
    servers: list[ScriptedSmtpServer] = []

    def factory(**options: Any) -> ScriptedSmtpServer:
        server = ScriptedSmtpServer(smtp_tls_files, **options).start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def smtp_server(smtp_server_factory: Any) -> ScriptedSmtpServer:
    return smtp_server_factory(users={"skylark": "secret"})
