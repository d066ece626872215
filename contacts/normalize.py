"""Email address validation and normalization for imports (pure: no ORM)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from functools import lru_cache

from django.utils.translation import gettext, gettext_lazy
from email_validator import EmailNotValidError, validate_email


class RejectReason(enum.StrEnum):
    """Why an import row was not stored: a closed vocabulary shown in reports."""

    INVALID_EMAIL = "invalid_email"
    MISSING_EMAIL = "missing_email"
    DUPLICATE_IN_FILE = "duplicate_in_file"
    UNDECODABLE = "undecodable"
    FIELD_TOO_LARGE = "field_too_large"
    MALFORMED_ROW = "malformed_row"
    NUL_BYTE = "nul_byte"
    ROLE_ADDRESS = "role_address"
    DISPOSABLE_DOMAIN = "disposable_domain"
    SUPPRESSED = "suppressed"

    @property
    def label(self) -> str:
        """The reason as a person reads it, in the active language."""
        return str(REJECT_REASON_LABELS[self])


REJECT_REASON_LABELS = {
    RejectReason.INVALID_EMAIL: gettext_lazy("Invalid email address"),
    RejectReason.MISSING_EMAIL: gettext_lazy("No email address"),
    RejectReason.DUPLICATE_IN_FILE: gettext_lazy("Duplicate in the file"),
    RejectReason.UNDECODABLE: gettext_lazy("Unreadable characters (wrong encoding?)"),
    RejectReason.FIELD_TOO_LARGE: gettext_lazy("A field is too large"),
    RejectReason.MALFORMED_ROW: gettext_lazy("Malformed row"),
    RejectReason.NUL_BYTE: gettext_lazy("NUL byte in the row"),
    RejectReason.ROLE_ADDRESS: gettext_lazy("Role address (info@, admin@ ...)"),
    RejectReason.DISPOSABLE_DOMAIN: gettext_lazy("Disposable email domain"),
    RejectReason.SUPPRESSED: gettext_lazy("Suppressed address"),
}


def reject_reason_label(reason: str) -> str:
    """A stored reason code as a sentence; an unknown code as it is."""
    try:
        return RejectReason(reason).label
    except ValueError:
        return reason


class InvalidEmail(ValueError):
    """The value is not a usable email address; ``reason`` is a RejectReason."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


ROLE_LOCAL_PARTS = frozenset(
    {
        "abuse",
        "admin",
        "administrator",
        "billing",
        "contact",
        "help",
        "hostmaster",
        "info",
        "mailer-daemon",
        "marketing",
        "no-reply",
        "noc",
        "noreply",
        "do-not-reply",
        "donotreply",
        "office",
        "postmaster",
        "root",
        "sales",
        "security",
        "support",
        "webmaster",
    }
)

# A small bundled list of well-known throwaway-mailbox domains; not meant to be exhaustive.
DISPOSABLE_DOMAINS = frozenset(
    {
        "10minutemail.com",
        "discard.email",
        "dispostable.com",
        "fakeinbox.com",
        "getnada.com",
        "guerrillamail.com",
        "guerrillamail.net",
        "mailinator.com",
        "maildrop.cc",
        "mintemail.com",
        "mohmal.com",
        "sharklasers.com",
        "temp-mail.org",
        "tempmail.com",
        "throwawaymail.com",
        "trashmail.com",
        "yopmail.com",
    }
)

# The common case (plain ASCII dot-atom local part) is checked with this expression and the
# domain once per distinct domain by email-validator; anything else takes the full validator.
# RFC 5322 3.2.3 atext, dot-atom without leading, trailing or doubled dots.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_FAST_LOCAL = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*\Z")
_MAX_LOCAL = 64  # RFC 5321 4.5.3.1.1
_MAX_ADDRESS = 254  # RFC 5321 4.5.3.1.3 path minus the angle brackets


@dataclass(frozen=True, slots=True)
class EmailPolicy:
    """Optional extra rejections on top of syntax."""

    reject_role: bool = False
    reject_disposable: bool = False


# First and last characters that may need more than strip(): a BOM, "<...>", "mailto:".
_WRAPPED_START = frozenset("\ufeff<mM")
_WRAPPED_END = frozenset("\ufeff>")


def _strip_wrapping(raw: str) -> str:
    value = raw.strip()
    if value[:1] not in _WRAPPED_START and value[-1:] not in _WRAPPED_END:
        return value  # the common case, without the loop below
    value = value.strip("\ufeff").strip()
    for _ in range(2):  # "<mailto:a@b>" and "mailto:<a@b>" both occur
        if value.startswith("<") and value.endswith(">"):
            value = value[1:-1].strip()
        if value[:7].lower() == "mailto:":
            value = value[7:].split("?", 1)[0].strip()
    return value


@lru_cache(maxsize=65536)
def _normalize_domain(domain: str) -> str:
    """Validate a domain once (through a dummy local part) and return its Unicode lower form."""
    try:
        result = validate_email(f"a@{domain}", check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidEmail(RejectReason.INVALID_EMAIL, str(exc)) from None
    return result.domain.lower()


def normalize_email(raw: str | None, *, policy: EmailPolicy | None = None) -> str:
    """Return the normalized address or raise InvalidEmail.

    Trimmed; ``mailto:`` and ``<...>`` stripped; the domain lower-cased in its Unicode form
    (IDNA decoded); the local part keeps its case (RFC 5321 2.4: it may be case-sensitive).
    """
    value = _strip_wrapping(raw or "")
    if not value:
        raise InvalidEmail(RejectReason.MISSING_EMAIL, gettext("no email address"))
    local, at, domain = value.rpartition("@")
    if (
        at
        and len(local) <= _MAX_LOCAL
        and len(value) <= _MAX_ADDRESS
        and _FAST_LOCAL.match(local)
        and domain.isascii()
        and "xn--" not in domain.lower()
    ):
        normalized = f"{local}@{_normalize_domain(domain)}"
    else:
        try:
            result = validate_email(value, check_deliverability=False)
        except EmailNotValidError as exc:
            raise InvalidEmail(RejectReason.INVALID_EMAIL, str(exc)) from None
        if len(result.local_part.encode("utf-8")) > _MAX_LOCAL:
            # email-validator only checks this in strict mode; SMTP servers enforce it.
            raise InvalidEmail(
                RejectReason.INVALID_EMAIL, gettext("local part longer than 64 octets")
            )
        normalized = f"{result.local_part}@{result.domain.lower()}"
    if policy is not None:
        _apply_policy(normalized, policy)
    return normalized


def _apply_policy(address: str, policy: EmailPolicy) -> None:
    local, _, domain = address.rpartition("@")
    if policy.reject_role and local.lower().split("+", 1)[0] in ROLE_LOCAL_PARTS:
        raise InvalidEmail(
            RejectReason.ROLE_ADDRESS, gettext("role address %(local)s@") % {"local": local}
        )
    if policy.reject_disposable and is_disposable_domain(domain):
        raise InvalidEmail(
            RejectReason.DISPOSABLE_DOMAIN,
            gettext("disposable domain %(domain)s") % {"domain": domain},
        )


def is_disposable_domain(domain: str) -> bool:
    """True when the domain or one of its parents is on the bundled disposable list."""
    labels = domain.lower().split(".")
    return any(".".join(labels[i:]) in DISPOSABLE_DOMAINS for i in range(len(labels) - 1))


def email_key(address: str) -> str:
    """The case-insensitive identity of a normalized address (used for de-duplication)."""
    return address.lower()
