"""Errors of the API app."""

from __future__ import annotations


class ApiError(Exception):
    """Base class of the API app's errors."""


class MessageRejected(ApiError):
    """A transactional message cannot be built (template, address, header, attachment)."""


class IdempotencyConflict(ApiError):
    """An Idempotency-Key was reused with a different request."""


class ScopeError(ApiError):
    """An unknown scope was asked for."""


class SenderNotAllowed(ApiError):
    """The API key may not send from this From domain."""


class InvalidSenderDomain(ApiError):
    """A sender domain given for a key's restriction is not a domain name."""
