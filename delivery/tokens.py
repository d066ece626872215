"""Signed tokens for public URLs (unsubscribe, tracking, web view), one salt per purpose."""

from __future__ import annotations

from django.conf import settings
from django.core import signing

_SIGNERS: dict[str, signing.Signer] = {}


def _signer(purpose: str) -> signing.Signer:
    signer = _SIGNERS.get(purpose)
    if signer is None:
        signer = _SIGNERS[purpose] = signing.Signer(salt=f"skylark.{purpose}")
    return signer


def make_token(purpose: str, delivery_id: int) -> str:
    return _signer(purpose).sign(str(delivery_id))


def read_token(purpose: str, token: str) -> int | None:
    """The delivery id of a valid token of this purpose, or None (forged, tampered, other purpose)."""
    try:
        return int(_signer(purpose).unsign(token))
    except (signing.BadSignature, ValueError):
        return None


def unsubscribe_url(delivery_id: int) -> str:
    return f"{settings.EDM_PUBLIC_URL}/u/{make_token('unsubscribe', delivery_id)}/"
