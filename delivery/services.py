"""Writes of the delivery app: outcomes (delivery.recording) and one message sent now."""

from __future__ import annotations

import logging

from django.conf import settings

from delivery import selectors
from delivery.recording import deliveries_record as deliveries_record  # a service of this app
from mailkit.compose import needs_smtputf8, validate_address
from mailkit.errors import InvalidAddressError
from mailkit.runner import send_envelopes
from mailkit.smtp import AcceptedHook, Envelope, SendResult, SendStatus

logger = logging.getLogger(__name__)


def message_send_now(
    *,
    data: bytes,
    from_email: str,
    to_email: str,
    tag: object = None,
    sender: str = "",
    envid: str = "",
    sign: bool = True,
    on_accepted: AcceptedHook | None = None,
) -> SendResult:
    """Send one message now through the default route (test sends, sign-up confirmations,
    transactional messages): signed when the From domain has a DKIM key, the envelope explicit,
    an internationalized domain as its A-label (SMTPUTF8 only for a non-ASCII local part).

    An unusable recipient address is a permanent result, not an exception. ``on_accepted``:
    the journal's hook (delivery.journal), awaited once the server has accepted the message.
    """
    try:
        recipient = validate_address(to_email)
    except InvalidAddressError as exc:
        return SendResult(tag, SendStatus.PERMANENT, None, "", str(exc), "compose")
    if sign:
        signer = selectors.dkim_signer_for(from_email.rpartition("@")[2].lower())
        if signer is not None:
            data = signer.sign(data)
    envelope = Envelope(
        sender=sender or f"bounces@{settings.EDM_BOUNCE_DOMAIN}",
        recipients=(recipient,),
        data=data,
        tag=tag,
        smtputf8=needs_smtputf8(recipient, from_email),
        dsn_envid=envid,
        dsn_notify="FAILURE,DELAY" if envid else "",
        dsn_ret="HDRS" if envid else "",
    )
    config = selectors.smtp_config_for(None)
    return next(iter(send_envelopes(config, [envelope], on_accepted=on_accepted)))
