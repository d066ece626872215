"""A pool of authenticated aiosmtplib connections that turns every send into a SendResult.

Pure module: no Django imports. One ``SmtpPool`` per SMTP server configuration, living as long
as the worker process (see mailkit/runner.py for use from synchronous code).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib
from aiosmtplib.protocol import normalize_message_line_endings

from mailkit.errors import SmtpConfigError
from mailkit.text import clean_text

logger = logging.getLogger(__name__)


class Security(StrEnum):
    NONE = "none"
    STARTTLS = "starttls"
    TLS = "tls"


DEFAULT_PORTS = {Security.NONE: 25, Security.STARTTLS: 587, Security.TLS: 465}


@dataclass(frozen=True)
class SmtpConfig:
    """How to reach and use one SMTP server; hashable, so it keys the runner's pools."""

    host: str
    port: int = 25
    security: Security = Security.STARTTLS
    username: str = ""
    password: str = ""
    timeout: float = 30.0
    pool_size: int = 4
    max_messages_per_connection: int = 1000
    max_connection_age: float = 300.0
    idle_noop_after: float = 30.0
    ca_file: str = ""
    verify_tls: bool = True
    local_hostname: str | None = None

    def __post_init__(self) -> None:
        if not self.host:
            raise SmtpConfigError("SMTP host is required")
        try:
            object.__setattr__(self, "security", Security(self.security))
        except ValueError:
            raise SmtpConfigError(f"unknown SMTP security {self.security!r}") from None
        if self.username and self.security is Security.NONE:
            raise SmtpConfigError(
                "SMTP credentials require security=starttls or tls; "
                "refusing to send a password in the clear"
            )
        if self.pool_size < 1:
            raise SmtpConfigError("pool_size must be at least 1")
        if self.timeout <= 0:
            raise SmtpConfigError("timeout must be positive")

    def __repr__(self) -> str:
        # Keep the password out of logs and tracebacks.
        return (
            f"SmtpConfig(host={self.host!r}, port={self.port}, security={self.security.value!r}, "
            f"username={self.username!r}, pool_size={self.pool_size})"
        )


def smtp_config_from_url(url: str, **overrides: Any) -> SmtpConfig:
    """Parse ``smtp[s]://user:password@host:port?security=starttls|tls|none`` into a config.

    User and password are percent-decoded; without a port, the port follows the security
    (25 none, 587 starttls, 465 tls). ``smtps://`` means implicit TLS. Other query parameters
    naming SmtpConfig fields (``timeout``, ``pool_size``, ``ca_file``, ``verify_tls`` ...)
    are accepted; keyword ``overrides`` win over the URL.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        raise SmtpConfigError(f"unsupported SMTP URL scheme {parts.scheme!r}")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    default_security = Security.TLS if parts.scheme == "smtps" else Security.STARTTLS
    try:
        security = Security(query.pop("security", default_security))
        port = parts.port
    except ValueError as exc:
        raise SmtpConfigError(f"invalid SMTP URL: {exc}") from None
    fields: dict[str, Any] = {
        "host": parts.hostname or "",
        "port": port or DEFAULT_PORTS[security],
        "security": security,
        "username": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
    }
    converters: dict[str, Any] = {
        "timeout": float,
        "pool_size": int,
        "max_messages_per_connection": int,
        "max_connection_age": float,
        "idle_noop_after": float,
        "ca_file": str,
        "verify_tls": lambda v: v.lower() not in ("0", "false", "no", "off"),
        "local_hostname": str,
    }
    for key, value in query.items():
        if key not in converters:
            raise SmtpConfigError(f"unknown SMTP URL parameter {key!r}")
        try:
            fields[key] = converters[key](value)
        except ValueError:
            raise SmtpConfigError(f"invalid value for SMTP URL parameter {key!r}") from None
    fields.update(overrides)
    return SmtpConfig(**fields)


def tls_client_context(*, ca_file: str = "", verify: bool = True) -> ssl.SSLContext:
    """The TLS policy of every outgoing SMTP session (the sender's pool and the monitor).

    Verified: the chain against the system store (or ``ca_file``) and the host name (RFC
    6125), in the handshake itself. ``verify=False`` is the operator's explicit opt-out
    (``verify_tls=0`` in the SMTP URL); it is never a default.
    """
    context = ssl.create_default_context(cafile=ca_file or None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def credentials_refusal(
    *, security: Security | str, encrypted: bool, verified: bool, verify_tls: bool = True
) -> str:
    """Why credentials may not be sent on this session, or "" when they may.

    The one rule of the sender and the monitor: a password travels only over TLS whose
    certificate and host name verified (unless the operator turned verification off).
    """
    if Security(security) is Security.NONE:
        return "credentials require security=starttls or tls"
    if not encrypted:
        return "the connection is not encrypted"
    if verify_tls and not verified:
        return "the server's certificate did not verify"
    return ""


class SendStatus(StrEnum):
    SENT = "sent"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class Envelope:
    """One SMTP transaction: the explicit envelope and the exact bytes to send."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    tag: int | str | None = None
    smtputf8: bool = False
    dsn_envid: str = ""
    dsn_notify: str = ""  # e.g. "FAILURE,DELAY"
    dsn_ret: str = ""  # "HDRS" or "FULL"


@dataclass(frozen=True)
class SendResult:
    """What happened to one envelope; ``refused`` lists recipients refused at RCPT."""

    tag: int | str | None
    status: SendStatus
    code: int | None
    enhanced: str
    text: str
    stage: str
    refused: tuple[tuple[str, int, str], ...] = ()


# Awaited with each accepted message's result while its connection is still held.
AcceptedHook = Callable[[SendResult], Awaitable[None]]

# RFC 3463: class.subject.detail, at the start of the reply text (RFC 2034).
ENHANCED_CODE = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


def parse_enhanced_code(text: str) -> str:
    match = ENHANCED_CODE.match(text)
    return ".".join(match.groups()) if match else ""


def status_for_code(code: int | None) -> SendStatus:
    if code is not None and 200 <= code < 300:
        return SendStatus.SENT
    if code is not None and 500 <= code < 600:
        return SendStatus.PERMANENT
    return SendStatus.TEMPORARY


def _result(
    envelope: Envelope,
    stage: str,
    code: int | None,
    text: str,
    *,
    status: SendStatus | None = None,
    refused: tuple[tuple[str, int, str], ...] = (),
) -> SendResult:
    # Multi-line replies on one line; a hostile server's NUL or invalid UTF-8 (surrogates
    # from aiosmtplib's surrogateescape) would make the outcome unwritable (PostgreSQL).
    text = clean_text(" ".join(text.split()))
    return SendResult(
        tag=envelope.tag,
        status=status or status_for_code(code),
        code=code,
        enhanced=parse_enhanced_code(text),
        text=text,
        stage=stage,
        refused=refused,
    )


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower() or "?"


class _ConnectionFailed(Exception):
    """Opening a connection failed; carries the result to report for the envelope."""

    def __init__(self, stage: str, code: int | None, text: str, status: SendStatus) -> None:
        super().__init__(text)
        self.stage = stage
        self.code = code
        self.text = text
        self.status = status

    def result(self, envelope: Envelope) -> SendResult:
        return _result(envelope, self.stage, self.code, self.text, status=self.status)


class _Connection:
    """One pooled client connection and its bookkeeping."""

    _ids = itertools.count(1)

    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self.id = next(self._ids)
        self.client = client
        self.opened_at = time.monotonic()
        self.last_used = self.opened_at
        self.messages = 0


class SmtpPool:
    """Up to ``pool_size`` reused connections to one server; ``send`` never raises for SMTP."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._slots = asyncio.Semaphore(config.pool_size)
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._tls_context: ssl.SSLContext | None = None
        self._local_hostname = config.local_hostname
        self._closed = False
        self.connections_opened = 0

    # --- public API ---

    async def send(
        self, envelope: Envelope, *, on_accepted: AcceptedHook | None = None
    ) -> SendResult:
        """Send one envelope; SMTP and network problems come back as results.

        ``on_accepted`` is awaited with the result when the server accepted the message
        (2xx to the end of DATA), before the connection is released to carry another one:
        a caller that keeps a journal of acceptances has it written first, and holding the
        connection while that write waits is what stops the sending.
        """
        if self._closed:
            raise RuntimeError("SmtpPool is closed")
        if not envelope.recipients:
            return _result(
                envelope, "rcpt", None, "envelope has no recipients", status=SendStatus.PERMANENT
            )
        async with self._slots:
            # One transparent retry when a reused connection turns out to be dead before
            # MAIL FROM was answered: nothing can have been delivered yet.
            for attempt in (1, 2):
                try:
                    connection = await self._acquire(envelope)
                except _ConnectionFailed as failure:
                    return failure.result(envelope)
                result, keep, retry = await self._transact(connection, envelope)
                try:
                    if on_accepted is not None and result.status is SendStatus.SENT:
                        await on_accepted(result)
                finally:
                    self._release(connection, keep)
                if retry and attempt == 1:
                    logger.info(
                        "SMTP connection %s was dead before MAIL; retrying once", connection.id
                    )
                    continue
                return result
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """QUIT idle connections and close everything; the pool cannot be used afterwards."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._quit(c) for c in idle), return_exceptions=True)
        for connection in list(self._busy):
            connection.client.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    @property
    def open_connections(self) -> int:
        return len(self._idle) + len(self._busy)

    # --- connections ---

    async def _acquire(self, envelope: Envelope) -> _Connection:
        while self._idle:
            connection = self._idle.pop()  # most recently used first: its socket is warm
            if not connection.client.is_connected or self._worn_out(connection):
                self._retire(connection)
                continue
            if time.monotonic() - connection.last_used > self.config.idle_noop_after:
                if not await self._alive(connection):
                    connection.client.close()
                    continue
            self._busy.add(connection)
            return connection
        connection = await self._open()
        self._busy.add(connection)
        return connection

    def _release(self, connection: _Connection, keep: bool) -> None:
        self._busy.discard(connection)
        connection.last_used = time.monotonic()
        if not keep or not connection.client.is_connected or self._closed:
            connection.client.close()
        elif self._worn_out(connection):
            self._retire(connection)
        else:
            self._idle.append(connection)

    def _worn_out(self, connection: _Connection) -> bool:
        return (
            connection.messages >= self.config.max_messages_per_connection
            or time.monotonic() - connection.opened_at >= self.config.max_connection_age
        )

    def _retire(self, connection: _Connection) -> None:
        """QUIT in the background: a retirement must not delay the next message."""
        logger.debug(
            "SMTP connection %s retired after %s messages", connection.id, connection.messages
        )
        task = asyncio.get_running_loop().create_task(self._quit(connection))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _quit(self, connection: _Connection) -> None:
        try:
            if connection.client.is_connected:
                await connection.client.quit(timeout=min(5.0, self.config.timeout))
        except (aiosmtplib.SMTPException, OSError):
            pass
        finally:
            connection.client.close()

    async def _alive(self, connection: _Connection) -> bool:
        try:
            response = await connection.client.noop()
        except (aiosmtplib.SMTPException, OSError):
            return False
        return 200 <= response.code < 300

    def _get_tls_context(self) -> ssl.SSLContext:
        if self._tls_context is None:
            self._tls_context = tls_client_context(
                ca_file=self.config.ca_file, verify=self.config.verify_tls
            )
        return self._tls_context

    async def _open(self) -> _Connection:
        config = self.config
        if self._local_hostname is None:
            # socket.getfqdn() may block on DNS: once per pool, off the loop.
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        implicit_tls = config.security is Security.TLS
        client = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            local_hostname=self._local_hostname,
            timeout=config.timeout,
            use_tls=implicit_tls,
            start_tls=False,  # done below, so that a missing STARTTLS is an error, not a downgrade
            tls_context=self._get_tls_context() if config.security is not Security.NONE else None,
        )
        stage = "tls" if implicit_tls else "connect"
        try:
            await client.connect()
            stage = "connect"
            if config.security is Security.STARTTLS:
                await client.ehlo()
                stage = "tls"
                if not client.supports_extension("starttls"):
                    reason = (
                        "refusing to authenticate in the clear"
                        if config.username
                        else "refusing to send in the clear"
                    )
                    raise _ConnectionFailed(
                        "tls",
                        None,
                        f"server does not offer STARTTLS; {reason}",
                        SendStatus.TEMPORARY,
                    )
                await client.starttls()
                await client.ehlo()
            if client.is_ehlo_or_helo_needed:
                # Greet now (security none, or implicit TLS): the MAIL options of the first
                # message (SIZE, DSN, SMTPUTF8) are chosen from what EHLO offers.
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()  # a pre-ESMTP server: no extensions
            if config.username:
                stage = "auth"
                encrypted = client.get_transport_info("sslcontext") is not None
                # Defence in depth: the handshake with tls_client_context() verified the
                # chain and the host name, or it would have failed.
                refusal = credentials_refusal(
                    security=config.security,
                    encrypted=encrypted,
                    verified=encrypted and config.verify_tls,
                    verify_tls=config.verify_tls,
                )
                if refusal:
                    raise _ConnectionFailed(
                        "tls", None, f"{refusal}; refusing to authenticate", SendStatus.TEMPORARY
                    )
                await client.login(config.username, config.password)
        except _ConnectionFailed:
            client.close()
            raise
        except (ssl.SSLError, ssl.CertificateError) as exc:
            client.close()
            raise _ConnectionFailed(
                "tls", None, f"TLS failed: {exc}", SendStatus.TEMPORARY
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            client.close()
            # Connection-level refusals (greeting, STARTTLS, AUTH) say nothing about the
            # recipient: report them as temporary so a bad password or a busy server never
            # bounces a whole campaign. The code and text are kept for the operator.
            raise _ConnectionFailed(stage, exc.code, exc.message, SendStatus.TEMPORARY) from None
        except aiosmtplib.SMTPTimeoutError as exc:
            client.close()
            raise _ConnectionFailed(
                "timeout", None, f"{stage}: {exc}", SendStatus.TEMPORARY
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ssl.SSLError | ssl.CertificateError):
                stage, exc = "tls", cause
            raise _ConnectionFailed(
                stage, None, f"{stage} failed: {exc}", SendStatus.TEMPORARY
            ) from None
        except BaseException:
            client.close()
            raise
        self.connections_opened += 1
        connection = _Connection(client)
        logger.debug("SMTP connection %s opened to %s:%s", connection.id, config.host, config.port)
        return connection

    # --- one transaction ---

    def _options(
        self, client: aiosmtplib.SMTP, envelope: Envelope, size: int
    ) -> tuple[list[str], list[str]]:
        mail_options: list[str] = []
        rcpt_options: list[str] = []
        if client.supports_extension("size"):
            mail_options.append(f"SIZE={size}")  # RFC 1870
        if client.supports_extension("8bitmime") and any(b > 127 for b in envelope.data):
            mail_options.append("BODY=8BITMIME")  # RFC 6152
        if self._needs_smtputf8(envelope):
            mail_options.append("SMTPUTF8")  # RFC 6531
        if client.supports_extension("dsn"):  # RFC 3461
            if envelope.dsn_ret:
                mail_options.append(f"RET={envelope.dsn_ret}")
            if envelope.dsn_envid:
                mail_options.append(f"ENVID={_xtext(envelope.dsn_envid)}")
            if envelope.dsn_notify:
                rcpt_options.append(f"NOTIFY={envelope.dsn_notify}")
        return mail_options, rcpt_options

    @staticmethod
    def _needs_smtputf8(envelope: Envelope) -> bool:
        return envelope.smtputf8 or not all(
            address.isascii() for address in (envelope.sender, *envelope.recipients)
        )

    async def _transact(
        self, connection: _Connection, envelope: Envelope
    ) -> tuple[SendResult, bool, bool]:
        """Run MAIL, RCPT..., DATA; return (result, keep the connection, retry once)."""
        client = connection.client
        stage = "mail"
        try:
            size = len(normalize_message_line_endings(envelope.data))
            limit = client.esmtp_extensions.get("size", "")
            if limit.isdigit() and int(limit) and size > int(limit):
                text = f"message size {size} exceeds the server's limit of {limit} bytes"
                return (
                    _result(envelope, "size", None, text, status=SendStatus.PERMANENT),
                    True,
                    False,
                )
            utf8 = self._needs_smtputf8(envelope)
            if utf8 and not client.supports_extension("smtputf8"):
                text = "message needs SMTPUTF8 (internationalized addresses) but the server does not offer it"
                return (
                    _result(envelope, "mail", None, text, status=SendStatus.PERMANENT),
                    True,
                    False,
                )
            mail_options, rcpt_options = self._options(client, envelope, size)
            encoding = "utf-8" if utf8 else "ascii"
            connection.messages += 1

            await client.mail(envelope.sender, options=mail_options, encoding=encoding)
            stage = "rcpt"
            refused: list[tuple[str, int, str]] = []
            for recipient in envelope.recipients:
                try:
                    await client.rcpt(recipient, options=rcpt_options, encoding=encoding)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    refused.append((recipient, exc.code, clean_text(" ".join(exc.message.split()))))
                    if exc.code == 421:
                        raise
            if len(refused) == len(envelope.recipients):
                _, code, text = refused[0]
                await self._reset(client)
                return (
                    _result(envelope, "rcpt", code, text, refused=tuple(refused)),
                    client.is_connected,
                    False,
                )
            stage = "data"
            response = await client.data(envelope.data)
        except aiosmtplib.SMTPResponseException as exc:
            # 421 closes the connection (aiosmtplib closes it too); other refusals: RSET, reuse.
            keep = exc.code != 421 and await self._reset(client)
            logger.info(
                "SMTP connection %s: %s %s at %s (recipient domain %s)",
                connection.id,
                exc.code,
                parse_enhanced_code(exc.message),
                stage,
                _domain(envelope.recipients[0]),
            )
            return _result(envelope, stage, exc.code, exc.message), keep, False
        except aiosmtplib.SMTPTimeoutError:
            client.close()
            text = f"no reply within {self.config.timeout:g}s at {stage}"
            return (
                _result(envelope, "timeout", None, text, status=SendStatus.TEMPORARY),
                False,
                False,
            )
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError, OSError) as exc:
            client.close()
            # Dead before MAIL was answered on a connection used before: it went stale.
            retry = stage == "mail" and connection.messages > 1
            text = f"connection lost at {stage}: {exc}"
            return (
                _result(envelope, "dropped", None, text, status=SendStatus.TEMPORARY),
                False,
                retry,
            )
        except ValueError as exc:
            # aiosmtplib refuses unsafe addresses (control characters, bad syntax) before
            # writing anything: the envelope itself is wrong.
            await self._reset(client)
            text = f"invalid envelope address: {exc}"
            return (
                _result(envelope, stage, None, text, status=SendStatus.PERMANENT),
                client.is_connected,
                False,
            )
        except aiosmtplib.SMTPException as exc:
            await self._reset(client)
            return (
                _result(envelope, stage, None, str(exc), status=SendStatus.PERMANENT),
                client.is_connected,
                False,
            )
        except asyncio.CancelledError:
            client.close()
            raise
        return (
            _result(envelope, "data", response.code, response.message, refused=tuple(refused)),
            True,
            False,
        )

    async def _reset(self, client: aiosmtplib.SMTP) -> bool:
        """RSET after a refused transaction; False when the connection is no longer usable."""
        if not client.is_connected:
            return False
        try:
            response = await client.rset()
        except (aiosmtplib.SMTPException, OSError):
            client.close()
            return False
        return 200 <= response.code < 300


def _xtext(value: str) -> str:
    """RFC 3461 section 4: xtext-encode an ENVID."""
    return "".join(
        chr(b) if 33 <= b <= 126 and b not in (ord("+"), ord("=")) else f"+{b:02X}"
        for b in value.encode()
    )
