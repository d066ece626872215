"""DKIM signing (RFC 6376 relaxed/relaxed; rsa-sha256 and ed25519-sha256, RFC 8463)."""

from __future__ import annotations

import base64
import hashlib
import re
import time

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from mailkit.errors import DkimError

__all__ = ["DEFAULT_SIGNED_HEADERS", "DkimSigner", "dkim_txt_record", "generate_dkim_key"]

DEFAULT_SIGNED_HEADERS: tuple[str, ...] = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Reply-To",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)

_WSP_RUN = re.compile(rb"[ \t]+")
_TRAILING_WSP = re.compile(rb"[ \t]+\r\n")
_FOLD = re.compile(rb"\r\n(?=[ \t])")
_SELECTOR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


def _canonical_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4 relaxed body canonicalization."""
    body = _TRAILING_WSP.sub(b"\r\n", body)
    body = _WSP_RUN.sub(b" ", body)
    body = body.rstrip(b"\r\n")
    if body.endswith(b" "):  # trailing WSP on the last line (no CRLF after it)
        body = body.rstrip(b" ")
    return body + b"\r\n" if body else b""


def _canonical_header(name: bytes, value: bytes) -> bytes:
    """RFC 6376 3.4.2 relaxed header canonicalization (without the final CRLF)."""
    value = _WSP_RUN.sub(b" ", _FOLD.sub(b"", value)).strip(b" ")
    return name.strip().lower() + b":" + value


def _split_headers(head: bytes) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + b"\r\n" + line)
        else:
            name, _, value = line.partition(b":")
            headers.append((name, value))
    return headers


class DkimSigner:
    """Built once per (domain, selector, key); sign() is the per-message hot path."""

    def __init__(
        self,
        *,
        domain: str,
        selector: str,
        private_key_pem: bytes,
        headers: tuple[str, ...] = DEFAULT_SIGNED_HEADERS,
    ) -> None:
        if not _SELECTOR.fullmatch(selector) or not _SELECTOR.fullmatch(domain):
            raise DkimError("invalid DKIM domain or selector")
        try:
            key = serialization.load_pem_private_key(private_key_pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise DkimError(f"unreadable DKIM private key: {exc}") from exc
        if isinstance(key, rsa.RSAPrivateKey):
            if key.key_size < 1024:
                raise DkimError("RSA DKIM keys must be at least 1024 bits (RFC 8301)")
            self.algorithm = "rsa-sha256"
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            self.algorithm = "ed25519-sha256"
        else:
            raise DkimError("DKIM keys must be RSA or Ed25519")
        if "from" not in {h.lower() for h in headers}:
            headers = ("From", *headers)
        self._key = key
        self._wanted = tuple(h.lower().encode() for h in headers)
        self._prefix = f"v=1; a={self.algorithm}; c=relaxed/relaxed; d={domain}; s={selector};"
        self.domain = domain
        self.selector = selector

    def _sign_digest(self, data: bytes) -> bytes:
        if self.algorithm == "rsa-sha256":
            return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[call-arg]
        # RFC 8463 3: Ed25519 signs the SHA-256 hash of the canonicalized data.
        return self._key.sign(hashlib.sha256(data).digest())  # type: ignore[call-arg]

    def sign(self, message: bytes, *, timestamp: int | None = None) -> bytes:
        """Return the message with a DKIM-Signature header prepended."""
        head, sep, body = message.partition(b"\r\n\r\n")
        if not sep:
            raise DkimError("message has no header/body separator")
        body_hash = base64.b64encode(hashlib.sha256(_canonical_body(body)).digest()).decode()
        present: dict[bytes, bytes] = {}
        for name, value in _split_headers(head):
            # The last instance of a header is the one signed first (RFC 6376 5.4.2).
            present[name.strip().lower()] = value
        signed_names = [name for name in self._wanted if name in present]
        canonical = b"".join(
            _canonical_header(name, present[name]) + b"\r\n" for name in signed_names
        )
        when = int(time.time()) if timestamp is None else timestamp
        tags = (
            f"{self._prefix} t={when};\r\n\th={':'.join(n.decode() for n in signed_names)};\r\n"
            f"\tbh={body_hash};\r\n\tb="
        )
        header_value = tags.encode()
        data = canonical + _canonical_header(b"DKIM-Signature", b" " + header_value)
        signature = base64.b64encode(self._sign_digest(data))
        folded = b"\r\n\t".join(signature[i : i + 72] for i in range(0, len(signature), 72))
        return b"DKIM-Signature: " + header_value + folded + b"\r\n" + message


def generate_dkim_key(*, algorithm: str = "rsa", bits: int = 2048) -> tuple[bytes, str]:
    """(private key PEM, public key base64 for the p= tag of the DNS record)."""
    if algorithm == "rsa":
        key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = rsa.generate_private_key(
            public_exponent=65537, key_size=bits
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    elif algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
        # RFC 8463 4.2: the raw 32-byte key, not SubjectPublicKeyInfo.
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    else:
        raise DkimError(f"unknown DKIM algorithm {algorithm!r}")
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, base64.b64encode(public).decode("ascii")


def dkim_txt_record(*, algorithm: str, public_key_b64: str) -> str:
    """The TXT record to publish at <selector>._domainkey.<domain>."""
    kind = {"rsa": "rsa", "rsa-sha256": "rsa", "ed25519": "ed25519", "ed25519-sha256": "ed25519"}
    if algorithm not in kind:
        raise DkimError(f"unknown DKIM algorithm {algorithm!r}")
    return f"v=DKIM1; k={kind[algorithm]}; p={public_key_b64}"
