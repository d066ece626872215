"""Writes of the API app, one module per room; the names callers use are re-exported here.

keys.py: API keys, scopes, sender domains, the per-process key cache and rate limits.
messages.py: transactional messages accepted, composed, stored (a Delivery each) and sent; the sweeper.
relay.py: a message submitted over SMTP (the relay) accepted as one message per recipient.
contacts.py: contacts over REST and the opt-out of a marketing message's recipient.

Callers write `from api import services; services.message_accept(...)`; a test that replaces
a private helper patches it in its own module (`api.services.keys._redis`).
"""

from api.services.contacts import contact_unsubscribe, contact_upsert, message_unsubscribe
from api.services.keys import (
    api_key_authenticate,
    api_key_authorize,
    api_key_create,
    api_key_revoke,
    api_key_throttle,
    api_keys_changed,
    sender_check,
    sender_domains_normalize,
)
from api.services.messages import (
    AttachmentIn,
    SendRequest,
    message_accept,
    message_send,
    message_unsubscribe_url,
    messages_sweep,
    suppression_reason,
)
from api.services.relay import messages_accept_raw

__all__ = [
    "AttachmentIn",
    "SendRequest",
    "api_key_authenticate",
    "api_key_authorize",
    "api_key_create",
    "api_key_revoke",
    "api_key_throttle",
    "api_keys_changed",
    "contact_unsubscribe",
    "contact_upsert",
    "message_accept",
    "message_send",
    "message_unsubscribe",
    "message_unsubscribe_url",
    "messages_accept_raw",
    "messages_sweep",
    "sender_check",
    "sender_domains_normalize",
    "suppression_reason",
]
