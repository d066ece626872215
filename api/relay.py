"""SMTP submission relay for applications (aiosmtpd): STARTTLS or implicit TLS, AUTH after TLS.

Applications submit mail with AUTH PLAIN/LOGIN (any user name, an API key as password);
nothing is relayed for an unauthenticated client (530 at MAIL). Authentication and storage
are injected callables (the API app provides them), so this module knows nothing of keys or
messages and the dependency stays api -> delivery.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailkit.compose import validate_address
from mailkit.errors import InvalidAddressError, MessageRefused

logger = logging.getLogger(__name__)

# (password) -> an opaque principal (an API key), or None to refuse.
Authenticate = Callable[[str], Any]
# (principal, mail_from, rcpt_tos, data) -> ids of the accepted messages; raises
# MessageRefused (its reply is sent as is) for a message the principal may not send.
Accept = Callable[[Any, str, Sequence[str], bytes], Sequence[str]]

MAX_RECIPIENTS = 100
# Database work runs here, never on the event loop: Django's ORM is synchronous.
_db_threads = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="relay-db")


def _in_thread(function: Callable[..., Any], *args: Any) -> Any:
    from django.db import close_old_connections

    close_old_connections()
    try:
        return function(*args)
    finally:
        close_old_connections()


class RelayHandler:
    def __init__(self, *, authenticate: Authenticate, accept: Accept) -> None:
        self._authenticate = authenticate
        self._accept = accept

    def authenticator(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        # aiosmtpd calls this synchronously on its loop; the key lookup (one indexed SELECT)
        # runs in a thread and the loop waits for it.
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        password = auth_data.password.decode("utf-8", "replace")
        try:
            principal = _db_threads.submit(_in_thread, self._authenticate, password).result(10)
        except Exception:  # noqa: BLE001 - a failing lookup is a refusal, never a crash
            logger.exception("relay: key lookup failed")
            principal = None
        if principal is None:
            logger.info("relay: AUTH refused from %s", session.peer[0] if session.peer else "?")
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=principal)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        if not session.authenticated:  # auth_required already says 530 at MAIL; belt and braces
            return "530 5.7.0 Authentication required"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        try:
            validate_address(address)
        except InvalidAddressError:
            return "553 5.1.3 Invalid recipient address"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        data = envelope.original_content or b""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        loop = asyncio.get_running_loop()
        try:
            ids = await loop.run_in_executor(
                _db_threads,
                _in_thread,
                self._accept,
                session.auth_data,
                envelope.mail_from or "",
                list(envelope.rcpt_tos),
                data,
            )
        except MessageRefused as exc:
            logger.info("relay: message refused: %s", exc.reply)
            return exc.reply
        except Exception:  # noqa: BLE001 - the client must retry, never lose the message
            logger.exception("relay: could not store a message")
            return "451 4.3.0 Temporary failure, try again later"
        return f"250 2.0.0 OK queued as {' '.join(ids)}"


class RelayController(Controller):
    def __init__(
        self,
        handler: RelayHandler,
        *,
        host: str,
        port: int,
        tls_context: ssl.SSLContext,
        implicit_tls: bool = False,
        max_bytes: int = 25 * 1024 * 1024,
    ) -> None:
        options: dict[str, Any] = {
            "authenticator": handler.authenticator,
            "auth_required": True,
            "data_size_limit": max_bytes,
            "enable_SMTPUTF8": True,
            "ident": "Skylark relay",
        }
        if implicit_tls:
            # TLS from the first byte: aiosmtpd only knows STARTTLS, so "AUTH after TLS"
            # holds by construction here.
            options.update(ssl_context=tls_context, auth_require_tls=False)
        else:
            options.update(tls_context=tls_context, require_starttls=True, auth_require_tls=True)
        super().__init__(handler, hostname=host, port=port, server_hostname=host, **options)
        self.implicit_tls = implicit_tls

    def _trigger_server(self) -> None:
        # Bound to port 0: learn the real port before aiosmtpd's start-up probe connects.
        if self.port == 0 and self.server is not None:
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def relay_start(
    *,
    authenticate: Authenticate,
    accept: Accept,
    host: str,
    port: int,
    cert_file: str,
    key_file: str,
    implicit_tls: bool = False,
    max_bytes: int = 25 * 1024 * 1024,
) -> RelayController:
    """Start a relay listener in its own thread; ``.stop()`` the result."""
    controller = RelayController(
        RelayHandler(authenticate=authenticate, accept=accept),
        host=host,
        port=port,
        tls_context=tls_context(cert_file, key_file),
        implicit_tls=implicit_tls,
        max_bytes=max_bytes,
    )
    controller.start()
    logger.info(
        "relay listening on %s:%s (%s)",
        host,
        controller.port,
        "TLS" if implicit_tls else "STARTTLS",
    )
    return controller
