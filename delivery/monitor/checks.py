"""One SMTP server health check: latency, EHLO extensions, TLS and certificate, AUTH.

Pure module: asyncio streams, ssl and cryptography, no Django. ``check_smtp`` never raises
for a network or protocol problem: the result says what was found (``up`` False, ``error``).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from cryptography import x509
from cryptography.x509.oid import NameOID

from mailkit.smtp import credentials_refusal, tls_client_context
from mailkit.text import clean_text

__all__ = ["CheckResult", "CheckTarget", "Finding", "check_smtp", "findings_for"]

# A real EHLO reply is a few dozen lines; a server sending more is not answering.
MAX_REPLY_LINES = 1000


@dataclass(frozen=True)
class CheckTarget:
    host: str
    port: int = 587
    security: str = "starttls"  # none | starttls | tls
    username: str = ""
    password: str = ""
    timeout: float = 10.0
    ca_file: str = ""
    verify_tls: bool = True  # False only by the operator's explicit opt-out (verify_tls=0)
    local_hostname: str = "skylark-monitor.localhost"


@dataclass
class CheckResult:
    host: str
    port: int
    security: str
    verify_tls: bool = True
    up: bool = False
    error: str = ""
    stage: str = "connect"
    connect_ms: float | None = None
    greeting_ms: float | None = None
    ehlo_ms: float | None = None
    total_ms: float | None = None
    banner: str = ""
    extensions: dict[str, str] = field(default_factory=dict)  # before TLS
    tls_extensions: dict[str, str] = field(default_factory=dict)  # after STARTTLS
    size_limit: int | None = None
    pipelining: bool = False
    eightbitmime: bool = False
    smtputf8: bool = False
    dsn: bool = False
    starttls_offered: bool = False
    auth_mechanisms: list[str] = field(default_factory=list)
    plaintext_auth_offered: bool = False  # AUTH advertised on an unencrypted session
    tls: bool = False
    tls_version: str = ""
    tls_cipher: str = ""
    cert_subject: str = ""
    cert_issuer: str = ""
    cert_names: list[str] = field(default_factory=list)
    cert_not_after: str = ""
    cert_days_left: float | None = None
    cert_hostname_match: bool | None = None
    # Chain (CA store or ca_file) and host name verified in the handshake, as the sender
    # verifies them; None: not checked (no TLS, or verification turned off).
    cert_verified: bool | None = None
    cert_error: str = ""
    auth_ok: bool | None = None  # None: not attempted
    auth_error: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Finding:
    severity: str  # "down" | "warning" | "info"
    code: str
    message: str


class _SmtpError(Exception):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


class _Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float):
        self.reader, self.writer, self.timeout = reader, writer, timeout

    async def reply(self, stage: str) -> tuple[int, list[str]]:
        # The timeout bounds the whole reply, not each line: a server trickling continuation
        # lines would otherwise hold the check (and its worker) for ever.
        async with asyncio.timeout(self.timeout):
            return await self._reply(stage)

    async def _reply(self, stage: str) -> tuple[int, list[str]]:
        lines: list[str] = []
        while True:
            try:
                raw = await self.reader.readline()
            except ValueError:  # asyncio's LimitOverrunError: a line over 64 KB
                raise _SmtpError(stage, "reply line too long") from None
            if not raw:
                raise _SmtpError(stage, "connection closed by the server")
            # Text from outside, stored in SmtpCheck: no NUL (PostgreSQL refuses it).
            line = clean_text(raw.decode("utf-8", "replace").rstrip("\r\n"))
            code = line[:3]
            # RFC 5321 4.2: three ASCII digits (str.isdigit and int take other scripts' too).
            if not (len(code) == 3 and code.isascii() and code.isdigit()):
                raise _SmtpError(stage, f"malformed reply {line[:80]!r}")
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(code), lines
            if len(lines) >= MAX_REPLY_LINES:
                raise _SmtpError(stage, f"reply longer than {MAX_REPLY_LINES} lines")

    async def command(self, stage: str, line: str) -> tuple[int, list[str]]:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply(stage)


def _extensions(lines: list[str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for line in lines[1:]:  # the first line is the greeting of EHLO
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            result[keyword.upper()] = params.strip()
    return result


def _name_text(name: x509.Name) -> str:
    common = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common[0].value) if common else name.rfc4514_string()


def _hostname_matches(host: str, names: list[str]) -> bool:
    """RFC 6125: a SAN dNSName (one leftmost wildcard label) or an iPAddress equal to host."""
    host = host.lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for name in names:
        name = name.lower().rstrip(".")
        if ip is not None:
            if name == str(ip):
                return True
            continue
        if name == host:
            return True
        if name.startswith("*.") and "." in host:
            if host.split(".", 1)[1] == name[2:]:
                return True
    return False


def _describe_certificate(result: CheckResult, der: bytes, now: dt.datetime) -> None:
    cert = x509.load_der_x509_certificate(der)
    result.cert_subject = _name_text(cert.subject)
    result.cert_issuer = _name_text(cert.issuer)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    result.cert_names = names
    not_after = cert.not_valid_after_utc
    result.cert_not_after = not_after.isoformat()
    result.cert_days_left = round((not_after - now).total_seconds() / 86400, 2)
    result.cert_hostname_match = _hostname_matches(result.host, names)


def _client_context(target: CheckTarget, *, verify: bool) -> ssl.SSLContext:
    # The sender's own policy (mailkit.smtp), so the check can never trust a certificate the
    # sender would refuse. verify=False only for the second look at a certificate that failed,
    # which never carries credentials.
    return tls_client_context(ca_file=target.ca_file, verify=verify and target.verify_tls)


async def _start_tls(session: _Session, target: CheckTarget, result: CheckResult) -> None:
    """Upgrade the stream; verify first, and on a verification failure say why and go on."""
    now = dt.datetime.now(dt.UTC)
    try:
        await asyncio.wait_for(
            session.writer.start_tls(
                _client_context(target, verify=True), server_hostname=target.host
            ),
            target.timeout,
        )
        result.cert_verified = True if target.verify_tls else None
    except ssl.SSLCertVerificationError as exc:
        result.cert_verified = False
        result.cert_error = exc.verify_message or str(exc)
        raise _RetryUnverified from None
    ssl_object = session.writer.get_extra_info("ssl_object")
    _record_tls(result, ssl_object, now)


class _RetryUnverified(Exception):
    pass


def _record_tls(result: CheckResult, ssl_object: ssl.SSLObject | None, now: dt.datetime) -> None:
    if ssl_object is None:
        return
    result.tls = True
    result.tls_version = ssl_object.version() or ""
    cipher = ssl_object.cipher()
    result.tls_cipher = cipher[0] if cipher else ""
    der = ssl_object.getpeercert(binary_form=True)
    if der:
        _describe_certificate(result, der, now)


async def check_smtp(target: CheckTarget) -> CheckResult:
    """Connect, read the greeting, EHLO, STARTTLS, EHLO again, try AUTH, QUIT."""
    result = _new_result(target)
    try:
        await _check(target, result, verify=True)
    except _RetryUnverified:
        # The certificate did not verify: look again without verifying, only to describe it
        # (never with credentials: _try_auth refuses on this pass).
        verified, error = result.cert_verified, result.cert_error
        result = _new_result(target)
        try:
            await _check(target, result, verify=False)
        except _RetryUnverified:  # pragma: no cover - cannot happen without verification
            pass
        result.cert_verified, result.cert_error = verified, error
        if target.username:
            result.auth_ok = None
            result.auth_error = (
                f"not attempted: the certificate did not verify ({error}); "
                "the password was not sent"
            )
    return result


def _new_result(target: CheckTarget) -> CheckResult:
    return CheckResult(
        host=target.host,
        port=target.port,
        security=target.security,
        verify_tls=target.verify_tls,
    )


async def _check(target: CheckTarget, result: CheckResult, *, verify: bool) -> None:
    started = time.perf_counter()
    writer = None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port), target.timeout
        )
        result.connect_ms = round((time.perf_counter() - started) * 1000, 2)
        session = _Session(reader, writer, target.timeout)
        if target.security == "tls":
            result.stage = "tls"
            await _upgrade(session, target, result, verify=verify)
        result.stage = "greeting"
        greeting_started = time.perf_counter()
        code, lines = await session.reply("greeting")
        result.greeting_ms = round((time.perf_counter() - greeting_started) * 1000, 2)
        result.banner = " ".join(lines)[:300]
        if code != 220:
            raise _SmtpError("greeting", f"{code} {result.banner}")
        result.stage = "ehlo"
        ehlo_started = time.perf_counter()
        code, lines = await session.command("ehlo", f"EHLO {target.local_hostname}")
        result.ehlo_ms = round((time.perf_counter() - ehlo_started) * 1000, 2)
        if code != 250:
            raise _SmtpError("ehlo", f"{code} {' '.join(lines)}")
        extensions = _extensions(lines)
        result.extensions = extensions
        result.starttls_offered = "STARTTLS" in extensions
        if not result.tls and "AUTH" in extensions:
            result.plaintext_auth_offered = True
        if not result.tls and result.starttls_offered:
            result.stage = "starttls"
            code, lines = await session.command("starttls", "STARTTLS")
            if code != 220:
                raise _SmtpError("starttls", f"{code} {' '.join(lines)}")
            await _upgrade(session, target, result, verify=verify)
            result.stage = "ehlo"
            code, lines = await session.command("ehlo", f"EHLO {target.local_hostname}")
            if code != 250:
                raise _SmtpError("ehlo", f"{code} after STARTTLS")
            result.tls_extensions = _extensions(lines)
            extensions = result.tls_extensions
        _read_extensions(result, extensions)
        if target.username:
            result.stage = "auth"
            await _try_auth(session, target, result, verified_pass=verify)
        result.up = True
        result.stage = "quit"
        try:
            await session.command("quit", "QUIT")
        except (TimeoutError, _SmtpError, OSError):
            pass
    except _RetryUnverified:
        raise
    except _SmtpError as exc:
        result.error = f"{exc.stage}: {exc}"
    except TimeoutError:
        result.error = f"{result.stage}: timed out after {target.timeout}s"
    except ssl.SSLError as exc:
        result.error = f"{result.stage}: TLS error: {exc.reason or exc}"
    except OSError as exc:
        result.error = f"{result.stage}: {exc.strerror or exc}"
    finally:
        result.total_ms = round((time.perf_counter() - started) * 1000, 2)
        if writer is not None:
            writer.close()


async def _upgrade(session: _Session, target: CheckTarget, result: CheckResult, *, verify: bool):
    if verify:
        await _start_tls(session, target, result)
        return
    now = dt.datetime.now(dt.UTC)
    await asyncio.wait_for(
        session.writer.start_tls(
            _client_context(target, verify=False), server_hostname=target.host
        ),
        target.timeout,
    )
    _record_tls(result, session.writer.get_extra_info("ssl_object"), now)


def _read_extensions(result: CheckResult, extensions: dict[str, str]) -> None:
    size = extensions.get("SIZE", None)
    if size is not None:
        result.size_limit = int(size) if size.isascii() and size.isdigit() else 0
    result.pipelining = "PIPELINING" in extensions
    result.eightbitmime = "8BITMIME" in extensions
    result.smtputf8 = "SMTPUTF8" in extensions
    result.dsn = "DSN" in extensions
    result.auth_mechanisms = sorted(extensions.get("AUTH", "").upper().split())


async def _try_auth(
    session: _Session, target: CheckTarget, result: CheckResult, *, verified_pass: bool
) -> None:
    # The sender's rule: never a password in the clear, nor over TLS that did not verify.
    refusal = credentials_refusal(
        security=target.security,
        encrypted=result.tls,
        verified=verified_pass and result.cert_verified is True,
        verify_tls=target.verify_tls,
    )
    if refusal:
        if not result.tls and result.starttls_offered is False and target.security != "none":
            refusal += " (the server does not offer STARTTLS)"
        result.auth_error = f"not attempted: {refusal}; the password was not sent"
        return
    mechanisms = result.auth_mechanisms
    user, password = target.username, target.password
    if "PLAIN" in mechanisms:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        code, lines = await session.command("auth", f"AUTH PLAIN {token}")
    elif "LOGIN" in mechanisms:
        code, lines = await session.command("auth", "AUTH LOGIN")
        if code == 334:
            code, lines = await session.command("auth", base64.b64encode(user.encode()).decode())
        if code == 334:
            code, lines = await session.command(
                "auth", base64.b64encode(password.encode()).decode()
            )
    else:
        result.auth_ok = False
        result.auth_error = "no PLAIN or LOGIN mechanism offered"
        return
    result.auth_ok = code == 235
    if not result.auth_ok:
        result.auth_error = f"{code} {' '.join(lines)}"[:300]


@dataclass(frozen=True)
class _Expect:
    """What a check's findings are judged against besides the result itself."""

    warn_days: int
    credentials: bool
    median_ms: float | None
    had_tls: bool


def _tls_findings(result: CheckResult, expect: _Expect) -> Iterator[Finding]:
    if not result.tls:
        # A warning where TLS is expected (credentials, configured security, or it was there).
        expected = expect.credentials or result.security != "none" or expect.had_tls
        message = "TLS disappeared" if expect.had_tls else "no TLS: STARTTLS is not offered"
        yield Finding("warning" if expected else "info", "no_tls", message)


def _cert_age_findings(result: CheckResult, expect: _Expect) -> Iterator[Finding]:
    days_left = result.cert_days_left
    if days_left is None:
        return
    if days_left <= 0:
        yield Finding("warning", "cert_expired", "the certificate has expired")
    elif days_left < expect.warn_days:
        yield Finding(
            "warning", "cert_expiring", f"the certificate expires in {int(days_left)} days"
        )


def _cert_name_findings(result: CheckResult, expect: _Expect) -> Iterator[Finding]:
    if result.cert_hostname_match is False:
        names = ", ".join(result.cert_names) or "none"
        message = f"the certificate is not for {result.host} ({names})"
        yield Finding("warning", "cert_hostname", message)


def _cert_trust_findings(result: CheckResult, expect: _Expect) -> Iterator[Finding]:
    if result.cert_verified is not False:
        return
    if result.security in ("starttls", "tls"):
        # The sender verifies exactly this, so it cannot use the server at all.
        yield Finding(
            "down",
            "tls_failed",
            f"TLS did not verify ({result.cert_error}): Skylark does not send "
            "through this server, nor send it the password",
        )
    message = f"the certificate did not verify: {result.cert_error}"
    yield Finding("warning", "cert_untrusted", message)


def _verify_off_findings(result: CheckResult, expect: _Expect) -> Iterator[Finding]:
    if result.tls and not result.verify_tls:
        message = "certificate verification is turned off for this server (verify_tls=0)"
        yield Finding("warning", "tls_verify_off", message)


def _auth_findings(result: CheckResult, expect: _Expect) -> Iterator[Finding]:
    if result.plaintext_auth_offered:
        message = "AUTH is offered before STARTTLS (in the clear)"
        yield Finding("warning", "plaintext_auth", message)
    if result.auth_ok is False:
        yield Finding("warning", "auth_failed", f"AUTH failed: {result.auth_error}")


def _latency_findings(result: CheckResult, expect: _Expect) -> Iterator[Finding]:
    latency, median_ms = result.greeting_ms, expect.median_ms
    if median_ms and latency is not None and latency > 2 * median_ms and latency > 50:
        yield Finding(
            "warning",
            "latency",
            f"greeting latency {latency:.0f} ms is over twice the 24 h median ({median_ms:.0f} ms)",
        )


# What a check of a server that answered is judged on, in the order the findings are listed.
FINDING_CHECKS: tuple[tuple[str, Callable[[CheckResult, _Expect], Iterator[Finding]]], ...] = (
    ("tls", _tls_findings),
    ("certificate age", _cert_age_findings),
    ("certificate name", _cert_name_findings),
    ("certificate trust", _cert_trust_findings),
    ("verification off", _verify_off_findings),
    ("auth", _auth_findings),
    ("latency", _latency_findings),
)


def findings_for(
    result: CheckResult,
    *,
    warn_days: int = 14,
    credentials: bool = False,
    median_ms: float | None = None,
    had_tls: bool = False,
) -> list[Finding]:
    """What an operator should hear about this check (pure; the alerts are built on it)."""
    if not result.up:
        return [Finding("down", "down", f"{result.host}:{result.port} is down: {result.error}")]
    expect = _Expect(warn_days, credentials, median_ms, had_tls)
    return [finding for _name, check in FINDING_CHECKS for finding in check(result, expect)]
