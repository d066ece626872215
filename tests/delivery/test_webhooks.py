"""Provider webhooks with the providers' documented sample payloads (adapted to our deliveries)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from contacts.models import Contact, ContactStatus, Suppression
from delivery import tokens
from delivery.intake.models import BounceMessage
from delivery.models import DeliveryStatus, EventKind
from tests.delivery.test_intake import make_sent_delivery

TOKEN = "hook-secret"
MAILGUN_KEY = "key-mailgun-signing"


@pytest.fixture(autouse=True)
def webhook_settings(settings):
    settings.EDM_WEBHOOK_TOKEN = TOKEN
    settings.EDM_MAILGUN_SIGNING_KEY = MAILGUN_KEY
    settings.EDM_SENDGRID_VERIFICATION_KEY = ""


def _post(client, path: str, payload, **extra):
    return client.post(path, data=json.dumps(payload), content_type="application/json", **extra)


# --- Amazon SES ----------------------------------------------------------------------------------


def _sns(message: dict) -> dict:
    # The SNS HTTP(S) notification envelope (docs.aws.amazon.com/sns, "HTTP/HTTPS notification").
    return {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic",
        "Message": json.dumps(message),
        "Timestamp": "2012-05-02T00:54:06.655Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLEw6JRN...",
        "SigningCertURL": "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
    }


def _ses_bounce(delivery, *, bounce_type="Permanent", sub_type="General", status="5.1.1"):
    # The SES "Bounce" notification example (docs.aws.amazon.com/ses, notification-examples).
    return {
        "notificationType": "Bounce",
        "bounce": {
            "feedbackId": "000001378603177f-7a5433e7-8edb-42ae-af10-f0181f34d6ee-000000",
            "bounceType": bounce_type,
            "bounceSubType": sub_type,
            "bouncedRecipients": [
                {
                    "emailAddress": delivery.email,
                    "action": "failed",
                    "status": status,
                    "diagnosticCode": f"smtp; 550 {status} user unknown",
                }
            ],
            "timestamp": "2016-01-27T14:59:38.237Z",
            "remoteMtaIp": "127.0.2.0",
            "reportingMTA": "dsn; b267-2.smtp-out.us-west-2.amazonses.com",
        },
        "mail": {
            "timestamp": "2016-01-27T14:59:38.237Z",
            "messageId": "0000014644fe5ef6-9a483358-9170-4cb4-a269-f5dcdf415321-000000",
            "source": "news@skylark.test",
            "destination": [delivery.email],
            "headersTruncated": False,
            "headers": [
                {"name": "From", "value": "news@skylark.test"},
                {"name": "To", "value": delivery.email},
                {"name": "Message-ID", "value": delivery.message_id},
                {"name": "X-Skylark-Delivery", "value": tokens.delivery_reference(delivery.pk)},
            ],
            "commonHeaders": {"messageId": delivery.message_id, "subject": "Spring"},
        },
    }


@pytest.mark.django_db
def test_ses_permanent_bounce_bounces_and_suppresses(client):
    delivery = make_sent_delivery()
    response = _post(client, f"/hooks/ses/?token={TOKEN}", _sns(_ses_bounce(delivery)))
    assert response.status_code == 200, response.content
    assert response.json() == {"stored": 1, "duplicates": 0}
    message = BounceMessage.objects.get()
    assert message.source == "webhook:ses"
    assert message.matched_by == "header"
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.BOUNCED
    assert Suppression.objects.filter(value=delivery.email).exists()

    # SNS retries deliver the same notification again: stored once.
    again = _post(client, f"/hooks/ses/?token={TOKEN}", _sns(_ses_bounce(delivery)))
    assert again.json() == {"stored": 0, "duplicates": 1}
    assert BounceMessage.objects.count() == 1


@pytest.mark.django_db
def test_ses_transient_bounce_is_soft(client):
    delivery = make_sent_delivery("full@example.com")
    payload = _ses_bounce(delivery, bounce_type="Transient", sub_type="MailboxFull", status="4.2.2")
    _post(client, f"/hooks/ses/?token={TOKEN}", _sns(payload))
    outcome = BounceMessage.objects.get().outcomes.get()
    assert outcome.kind == "soft"
    assert not Suppression.objects.exists()


@pytest.mark.django_db
def test_ses_complaint(client):
    delivery = make_sent_delivery("angry@example.com")
    complaint = {
        "notificationType": "Complaint",
        "complaint": {
            "userAgent": "AnyCompany Feedback Loop (V0.01)",
            "complainedRecipients": [{"emailAddress": delivery.email}],
            "complaintFeedbackType": "abuse",
            "arrivalDate": "2016-01-27T14:59:38.237Z",
            "timestamp": "2016-01-27T14:59:38.237Z",
            "feedbackId": "000001378603177f-18c07c78-fa81-4a58-9dd1-fedc3cb8f49a-000000",
        },
        "mail": _ses_bounce(delivery)["mail"],
    }
    _post(client, f"/hooks/ses/?token={TOKEN}", _sns(complaint))
    assert delivery.events.filter(kind=EventKind.COMPLAINT).exists()
    assert Contact.objects.get(pk=delivery.contact_id).status == ContactStatus.COMPLAINED


@pytest.mark.django_db
@pytest.mark.parametrize("query", ["", "?token=wrong"])
def test_ses_without_the_token_is_forbidden_and_changes_nothing(client, query):
    delivery = make_sent_delivery()
    response = _post(client, f"/hooks/ses/{query}", _sns(_ses_bounce(delivery)))
    assert response.status_code == 403
    assert not BounceMessage.objects.exists()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT


@pytest.mark.django_db
def test_ses_subscription_confirmation_is_kept_for_the_operator(client):
    payload = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37...",
        "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic",
        "SubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&Token=x",
    }
    assert _post(client, f"/hooks/ses/?token={TOKEN}", payload).status_code == 200
    message = BounceMessage.objects.get()
    assert message.status == "ignored"
    assert b"ConfirmSubscription" in bytes(message.raw)


# --- SendGrid ------------------------------------------------------------------------------------


def _sendgrid_events(delivery, other):
    # From SendGrid's "Event Webhook reference" examples.
    return [
        {
            "email": delivery.email,
            "timestamp": 1513299569,
            "smtp-id": delivery.message_id,
            "event": "bounce",
            "category": "cat facts",
            "sg_event_id": "6g4ZI7SA-xmRDv57GoPIPw==",
            "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
            "reason": "500 unknown recipient",
            "status": "5.0.0",
            "type": "bounce",
        },
        {
            "email": other.email,
            "timestamp": 1513299569,
            "smtp-id": other.message_id,
            "event": "spamreport",
            "sg_event_id": "37nvH5QBz858KGVYCM4uOA==",
            "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        },
        {
            "email": "someone@example.org",
            "timestamp": 1513299569,
            "event": "delivered",
            "sg_event_id": "rWVYmVk90MjZJ9iohOBa3w==",
        },
    ]


@pytest.mark.django_db
def test_sendgrid_bounce_and_spamreport(client):
    delivery = make_sent_delivery("dead@example.com")
    other = make_sent_delivery("angry@example.com")
    response = _post(client, f"/hooks/sendgrid/?token={TOKEN}", _sendgrid_events(delivery, other))
    assert response.json() == {"stored": 2, "duplicates": 0}
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.BOUNCED
    assert BounceMessage.objects.get(delivery=delivery).matched_by == "message_id"
    assert Contact.objects.get(pk=other.contact_id).status == ContactStatus.COMPLAINED


@pytest.mark.django_db
def test_sendgrid_dropped_bounced_address_matches_by_recipient(client):
    delivery = make_sent_delivery("dead@example.com")
    event = {
        "email": delivery.email,
        "timestamp": 1513299569,
        "event": "dropped",
        "reason": "Bounced Address",
        "sg_event_id": "zmzJhfJgAfUSOW80yEbPyw==",
        "status": "5.0.0",
    }
    _post(client, f"/hooks/sendgrid/?token={TOKEN}", [event])
    message = BounceMessage.objects.get()
    assert message.matched_by == "recipient"
    assert Suppression.objects.filter(value=delivery.email).exists()


@pytest.mark.django_db
def test_sendgrid_signed_webhook(client, settings):
    private_key = ec.generate_private_key(ec.SECP256R1())
    public_der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    settings.EDM_SENDGRID_VERIFICATION_KEY = base64.b64encode(public_der).decode()
    delivery = make_sent_delivery()
    body = json.dumps(_sendgrid_events(delivery, make_sent_delivery("b@example.com"))).encode()
    timestamp = str(int(time.time()))
    signature = base64.b64encode(
        private_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    ).decode()
    headers = {
        "HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_SIGNATURE": signature,
        "HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_TIMESTAMP": timestamp,
    }
    tampered = body.replace(b"500 unknown", b"550 unknown")
    forbidden = client.post(
        "/hooks/sendgrid/", data=tampered, content_type="application/json", **headers
    )
    assert forbidden.status_code == 403
    assert not BounceMessage.objects.exists()
    # With a verification key the shared token alone is not enough.
    assert _post(client, f"/hooks/sendgrid/?token={TOKEN}", json.loads(body)).status_code == 403

    ok = client.post("/hooks/sendgrid/", data=body, content_type="application/json", **headers)
    assert ok.status_code == 200
    assert BounceMessage.objects.count() == 2


# --- Mailgun -------------------------------------------------------------------------------------


def _mailgun(delivery, *, key=MAILGUN_KEY, severity="permanent", timestamp=None, token=None):
    timestamp = str(int(time.time()) if timestamp is None else timestamp)
    token = token or secrets.token_hex(25)  # Mailgun's tokens are random, one per call
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    # Mailgun's "failed" (permanent) event sample, from the webhooks documentation.
    return {
        "signature": {"timestamp": timestamp, "token": token, "signature": signature},
        "event-data": {
            "event": "failed",
            "id": "G9Bn5sl1TC6nu79C8C0bwg",
            "timestamp": 1521233195.375624,
            "severity": severity,
            "reason": "bounce",
            "log-level": "error",
            "recipient": delivery.email,
            "recipient-domain": delivery.email.rpartition("@")[2],
            "delivery-status": {
                "attempt-no": 1,
                "code": 550 if severity == "permanent" else 452,
                "message": "5.1.1 The email account that you tried to reach does not exist"
                if severity == "permanent"
                else "4.2.2 The email account that you tried to reach is over quota",
                "description": "",
                "mx-host": "smtp-in.example.com",
            },
            "message": {
                "headers": {
                    "to": delivery.email,
                    "message-id": delivery.message_id.strip("<>"),
                    "from": "news@skylark.test",
                    "subject": "Spring",
                },
                "size": 111,
            },
            "user-variables": {},
        },
    }


@pytest.mark.django_db
def test_mailgun_permanent_failure_bounces(client):
    delivery = make_sent_delivery()
    response = _post(client, "/hooks/mailgun/", _mailgun(delivery))
    assert response.status_code == 200, response.content
    message = BounceMessage.objects.get()
    assert message.matched_by == "message_id"
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.BOUNCED
    assert delivery.reason == "unknown_user"


@pytest.mark.django_db
def test_mailgun_temporary_failure_is_soft(client):
    delivery = make_sent_delivery()
    _post(client, "/hooks/mailgun/", _mailgun(delivery, severity="temporary"))
    assert BounceMessage.objects.get().outcomes.get().kind == "soft"
    assert not Suppression.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "payload_kwargs", [{"key": "wrong-key"}, {"timestamp": int(time.time()) - 3600}]
)
def test_mailgun_wrong_or_stale_signature_is_forbidden(client, payload_kwargs):
    delivery = make_sent_delivery()
    response = _post(client, "/hooks/mailgun/", _mailgun(delivery, **payload_kwargs))
    assert response.status_code == 403
    assert not BounceMessage.objects.exists()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT


@pytest.mark.django_db
def test_a_mailgun_signature_replayed_with_other_events_is_forbidden(client):
    """Mailgun signs only timestamp and token: a captured signature must not carry a forged
    body (here: a bounce of another person) while it is fresh."""
    genuine = make_sent_delivery("real@example.com")
    victim = make_sent_delivery("victim@example.com")
    captured = _mailgun(genuine)
    assert _post(client, "/hooks/mailgun/", captured).status_code == 200
    # Mailgun retries the same call after an error: the same body is accepted (and deduplicated).
    retry = _post(client, "/hooks/mailgun/", captured)
    assert retry.status_code == 200 and retry.json() == {"stored": 0, "duplicates": 1}

    forged = _mailgun(victim)
    forged["signature"] = captured["signature"]
    response = _post(client, "/hooks/mailgun/", forged)
    assert response.status_code == 403
    victim.refresh_from_db()
    assert victim.status == DeliveryStatus.SENT
    assert not Suppression.objects.filter(value=victim.email).exists()


# --- Postmark ------------------------------------------------------------------------------------


def _postmark_bounce(delivery):
    # Postmark's bounce webhook example (postmarkapp.com/developer/webhooks/bounce-webhook).
    return {
        "RecordType": "Bounce",
        "MessageStream": "outbound",
        "ID": 4323372036854775807,
        "Type": "HardBounce",
        "TypeCode": 1,
        "Name": "Hard bounce",
        "Tag": "Test",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Metadata": {"skylark_delivery": tokens.delivery_reference(delivery.pk)},
        "ServerID": 23,
        "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": delivery.email,
        "From": "news@skylark.test",
        "BouncedAt": "2019-11-05T16:33:54.9070259Z",
        "DumpAvailable": True,
        "Inactive": True,
        "CanActivate": True,
        "Subject": "Spring",
    }


@pytest.mark.django_db
def test_postmark_hard_bounce_with_basic_auth(client):
    delivery = make_sent_delivery()
    auth = "Basic " + base64.b64encode(f"postmark:{TOKEN}".encode()).decode()
    response = _post(
        client, "/hooks/postmark/", _postmark_bounce(delivery), HTTP_AUTHORIZATION=auth
    )
    assert response.status_code == 200
    assert BounceMessage.objects.get().matched_by == "header"
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.BOUNCED


@pytest.mark.django_db
def test_postmark_spam_complaint(client):
    delivery = make_sent_delivery("angry@example.com")
    payload = {
        "RecordType": "SpamComplaint",
        "MessageStream": "outbound",
        "ID": 42,
        "Type": "SpamComplaint",
        "TypeCode": 512,
        "Name": "Spam complaint",
        "MessageID": "00000000-0000-0000-0000-000000000000",
        "Metadata": {},
        "Email": delivery.email,
        "From": "news@skylark.test",
        "BouncedAt": "2019-11-05T16:33:54.9070259Z",
    }
    _post(client, f"/hooks/postmark/?token={TOKEN}", payload)
    assert BounceMessage.objects.get().matched_by == "recipient"
    assert Contact.objects.get(pk=delivery.contact_id).status == ContactStatus.COMPLAINED


@pytest.mark.django_db
def test_postmark_wrong_basic_auth_is_forbidden(client):
    delivery = make_sent_delivery()
    auth = "Basic " + base64.b64encode(b"postmark:nope").decode()
    response = _post(
        client, "/hooks/postmark/", _postmark_bounce(delivery), HTTP_AUTHORIZATION=auth
    )
    assert response.status_code == 403
    assert not BounceMessage.objects.exists()


@pytest.mark.django_db
def test_no_token_configured_refuses_everything(client, settings):
    settings.EDM_WEBHOOK_TOKEN = ""
    delivery = make_sent_delivery()
    assert _post(client, "/hooks/postmark/?token=", _postmark_bounce(delivery)).status_code == 403


@pytest.mark.django_db
def test_unknown_provider_and_get_requests(client):
    assert _post(client, f"/hooks/nobody/?token={TOKEN}", {}).status_code == 404
    assert client.get(f"/hooks/ses/?token={TOKEN}").status_code == 405
