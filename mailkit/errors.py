"""Exceptions of the delivery app."""


class DeliveryError(Exception):
    """Base class for delivery errors."""


class TemplateError(DeliveryError):
    """A message template does not compile or does not render."""

    def __init__(self, message: str, *, field: str = "", line: int | None = None) -> None:
        self.field = field
        self.line = line
        where = field + (f", line {line}" if line else "")
        super().__init__(f"{where}: {message}" if where else message)


class SmtpConfigError(DeliveryError):
    """An SMTP server configuration is invalid or unsafe."""


class DkimError(DeliveryError):
    """A DKIM key is unusable."""


class InvalidAddressError(DeliveryError):
    """An email address is malformed or could smuggle a header or a recipient."""


class InvalidHeaderError(DeliveryError):
    """A header value cannot be written safely."""


class MessageRefused(DeliveryError):
    """A message submitted to the relay is refused for good; `reply` is the SMTP reply."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        super().__init__(reply)
