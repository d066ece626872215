"""The REST API, /api/v1/ (django-ninja): OpenAPI schema at openapi.json, docs at docs."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from django.db import DataError
from django.http import HttpRequest
from django.utils.translation import gettext as _
from ninja import Field, NinjaAPI, Router, Schema, Status
from ninja.errors import AuthenticationError, HttpError
from ninja.security import APIKeyHeader, HttpBearer
from pydantic import field_validator, model_validator
from pydantic_core import PydanticCustomError

from api import selectors, services
from api.errors import IdempotencyConflict, MessageRejected, SenderNotAllowed
from api.models import ApiKey, Scope
from mailkit.text import refused_path

logger = logging.getLogger(__name__)


# -- authentication, scopes, rate limit --------------------------------------------------------


class _Throttled(Exception):
    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after


def _authenticate(token: str) -> ApiKey | None:
    key, retry_after = services.api_key_authorize(token or "")
    if key is None:
        return None
    if retry_after:
        raise _Throttled(retry_after)
    return key


class BearerKey(HttpBearer):
    """``Authorization: Bearer sky_...``"""

    def authenticate(self, request: HttpRequest, token: str) -> ApiKey | None:
        return _authenticate(token)


class HeaderKey(APIKeyHeader):
    """``X-API-Key: sky_...``"""

    param_name = "X-API-Key"

    def authenticate(self, request: HttpRequest, key: str | None) -> ApiKey | None:
        return _authenticate(key or "")


api = NinjaAPI(
    title="Skylark API",
    version="1.0",
    description=(
        "Transactional email, contacts and campaigns. Authenticate with an API key "
        "(`Authorization: Bearer sky_...` or `X-API-Key`); each endpoint names the scope it "
        "needs. See docs/api.md."
    ),
    auth=[BearerKey(), HeaderKey()],
    urls_namespace="api-v1",
    docs_url="/docs",
)


@api.exception_handler(_Throttled)
def _throttled(request: HttpRequest, exc: _Throttled):
    response = api.create_response(
        request, {"detail": "rate limit exceeded for this API key"}, status=429
    )
    response["Retry-After"] = str(exc.retry_after)
    return response


@api.exception_handler(AuthenticationError)
def _unauthorized(request: HttpRequest, exc: AuthenticationError):
    response = api.create_response(request, {"detail": "invalid or revoked API key"}, status=401)
    response["WWW-Authenticate"] = 'Bearer realm="skylark"'
    return response


@api.exception_handler(MessageRejected)
def _rejected(request: HttpRequest, exc: MessageRejected):
    return api.create_response(request, {"detail": str(exc)}, status=422)


@api.exception_handler(SenderNotAllowed)
def _sender_not_allowed(request: HttpRequest, exc: SenderNotAllowed):
    # 403, like a missing scope: the request is well formed, this key may not do it.
    return api.create_response(request, {"detail": str(exc)}, status=403)


@api.exception_handler(DataError)
def _unstorable(request: HttpRequest, exc: DataError):
    # The schemas refuse what the databases cannot store; this is the net under them.
    logger.warning("API %s: the database refused a value (%s)", request.path, type(exc).__name__)
    detail = _("The request holds a value that cannot be stored.")
    return api.create_response(request, {"detail": detail}, status=422)


@api.exception_handler(Exception)
def _internal_error(request: HttpRequest, exc: Exception):
    # JSON, never Django's HTML error page (nor, with DEBUG, ninja's plain-text traceback).
    logger.exception("API %s %s failed", request.method, request.path)
    detail = _("Internal error: the request was not completed.")
    return api.create_response(request, {"detail": detail}, status=500)


def require(request: HttpRequest, scope: Scope) -> ApiKey:
    key: ApiKey = request.auth
    if not key.has_scope(scope):
        raise HttpError(403, _("this API key lacks the %(scope)s scope") % {"scope": scope})
    return key


class Error(Schema):
    detail: str


class Unprocessable(Schema):
    """A 422: our own refusals say why in a sentence; request validation lists each field."""

    detail: str | list[dict[str, Any]]


class In(Schema):
    """A request body. No string in it, keys included, may hold NUL or a lone surrogate:
    PostgreSQL refuses both (text and jsonb), so they are refused here with a 422."""

    @model_validator(mode="wrap")
    @classmethod
    def _storable_text(cls, data: Any, handler: Any) -> Any:
        path = refused_path(data)
        if path is not None:
            raise PydanticCustomError(
                "unstorable_text",
                _("%(field)s holds a NUL character or invalid Unicode, which cannot be stored.")
                % {"field": path or _("The value")},
            )
        return handler(data)


# PostgreSQL's timestamptz takes offsets up to 15:59 either way (Python's datetime up to 23:59).
_MAX_OFFSET = timedelta(hours=15, minutes=59)


def storable_datetime(value: datetime) -> datetime:
    """``value`` in UTC, or a 422 for a naive time, or an offset or a date the database
    cannot store."""
    offset = value.utcoffset()
    if offset is None:
        # A naive time means nothing to a server in another zone (and would not compare).
        raise PydanticCustomError(
            "datetime_naive", _("The date and time must include a time zone offset.")
        )
    if abs(offset) > _MAX_OFFSET:
        raise PydanticCustomError(
            "datetime_offset", _("The time zone offset must be between -15:59 and +15:59.")
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError("datetime_range", _("The date is out of range.")) from None


# -- messages ----------------------------------------------------------------------------------


class AttachmentIn(In):
    filename: str = Field(max_length=255)
    content_type: str = Field("application/octet-stream", max_length=255)
    content: str = Field(description="Base64 of the file.")
    content_id: str = Field("", max_length=200, description="Set for an inline (cid:) image.")


class MessageIn(In):
    to: str = Field(max_length=320, description="One recipient address.")
    to_name: str = Field("", max_length=300)
    from_email: str = Field("", max_length=320, description="Default: EDM_DEFAULT_FROM_EMAIL.")
    from_name: str = Field("", max_length=200)
    reply_to: str = Field("", max_length=320)
    template: str | int | None = Field(None, description="A template id or name.")
    subject: str = Field("", max_length=998, description="Inline content (no template).")
    html: str = ""
    text: str = ""
    data: dict = Field(default_factory=dict, description="Variables for the template.")
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=50)
    tags: list[str] = Field(default_factory=list, max_length=20)
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers (X-...).")
    category: Literal["transactional", "marketing"] = "transactional"


class MessageAccepted(Schema):
    id: str
    status: str
    message_id: str


class MessageEventOut(Schema):
    kind: str
    at: str
    smtp_code: int | None
    enhanced_status: str
    detail: str


class MessageOut(Schema):
    id: str
    status: str
    category: str
    to: str
    from_email: str
    subject: str
    tags: list[str]
    message_id: str
    attempts: int
    smtp_code: int | None
    enhanced_status: str
    smtp_reply: str
    reason: str
    created_at: str
    sent_at: str | None
    next_attempt_at: str | None
    events: list[MessageEventOut] = []


messages = Router(tags=["messages"])


@messages.post(
    "",
    response={
        202: MessageAccepted,
        401: Error,
        403: Error,
        409: Error,
        422: Unprocessable,
        429: Error,
    },
    summary="Send a transactional message (scope messages:send)",
)
def send_message(request: HttpRequest, payload: MessageIn):
    """Accepted messages go through the priority queue. With an `Idempotency-Key` header a
    repeated request returns the first answer and never sends twice."""
    key = require(request, Scope.MESSAGES_SEND)
    idempotency_key = request.headers.get("Idempotency-Key", "").strip()
    if len(idempotency_key) > 255:
        raise HttpError(422, _("Idempotency-Key is longer than 255 characters"))
    send_request = services.SendRequest(
        to_email=payload.to,
        to_name=payload.to_name,
        from_email=payload.from_email,
        from_name=payload.from_name,
        reply_to=payload.reply_to,
        template=str(payload.template) if payload.template is not None else "",
        subject=payload.subject,
        html=payload.html,
        text=payload.text,
        data=payload.data,
        attachments=tuple(
            services.AttachmentIn(
                filename=a.filename,
                content_type=a.content_type,
                content_base64=a.content,
                content_id=a.content_id,
            )
            for a in payload.attachments
        ),
        tags=tuple(payload.tags),
        headers=payload.headers,
        category=payload.category,
    )
    try:
        message, _created = services.message_accept(
            api_key=key, request=send_request, idempotency_key=idempotency_key
        )
    except IdempotencyConflict as exc:
        raise HttpError(409, str(exc)) from None
    body = {
        "id": str(message.public_id),
        "status": "accepted",
        "message_id": message.delivery.message_id,
    }
    return Status(202, body)


@messages.get(
    "/{message_id}",
    response={200: MessageOut, 401: Error, 403: Error, 404: Error},
    summary="Status and events of a message (scope messages:read)",
)
def get_message(request: HttpRequest, message_id: str):
    key = require(request, Scope.MESSAGES_READ)
    message = selectors.message_for_key(api_key=key, public_id=message_id)
    if message is None:
        raise HttpError(404, _("no such message"))
    return {**selectors.message_status(message), "events": selectors.message_events(message)}


@messages.get(
    "/{message_id}/events",
    response={200: list[MessageEventOut], 401: Error, 403: Error, 404: Error},
    summary="Events of a message (scope messages:read)",
)
def get_message_events(request: HttpRequest, message_id: str):
    key = require(request, Scope.MESSAGES_READ)
    message = selectors.message_for_key(api_key=key, public_id=message_id)
    if message is None:
        raise HttpError(404, _("no such message"))
    return selectors.message_events(message)


# -- contacts ----------------------------------------------------------------------------------


class ContactIn(In):
    email: str = Field(max_length=320)
    name: str | None = Field(None, max_length=300)
    attributes: dict = Field(default_factory=dict)
    lists: list[str] = Field(default_factory=list, description="Subscribe to these lists.")


class ContactOut(Schema):
    id: int
    email: str
    name: str
    status: str
    attributes: dict
    lists: dict[str, str]
    created: bool = False


class UnsubscribeIn(In):
    email: str = Field(max_length=320)
    lists: list[str] = Field(
        default_factory=list, description="Empty: unsubscribe from everything (suppressed)."
    )


def _contact_out(contact, created: bool = False) -> dict:
    return {
        "id": contact.pk,
        "email": contact.email,
        "name": contact.name,
        "status": contact.status,
        "attributes": contact.attributes,
        "lists": {
            s.contact_list.name: s.status
            for s in contact.subscriptions.select_related("contact_list")
        },
        "created": created,
    }


contacts = Router(tags=["contacts"])


@contacts.post(
    "",
    response={200: ContactOut, 201: ContactOut, 401: Error, 403: Error, 422: Unprocessable},
    summary="Create or update a contact by address, subscribe it to lists (contacts:write)",
)
def upsert_contact(request: HttpRequest, payload: ContactIn):
    require(request, Scope.CONTACTS_WRITE)
    contact, created = services.contact_upsert(
        email=payload.email, name=payload.name, attributes=payload.attributes, lists=payload.lists
    )
    return Status(201 if created else 200, _contact_out(contact, created))


@contacts.post(
    "/unsubscribe",
    response={200: dict, 401: Error, 403: Error, 422: Unprocessable},
    summary="Unsubscribe a contact from lists, or from everything (contacts:write)",
)
def unsubscribe_contact(request: HttpRequest, payload: UnsubscribeIn):
    require(request, Scope.CONTACTS_WRITE)
    changed = services.contact_unsubscribe(email=payload.email, lists=payload.lists)
    return {"email": payload.email, "subscriptions_changed": changed}


# -- campaigns ---------------------------------------------------------------------------------


class CampaignIn(In):
    name: str = Field(max_length=200)
    lists: list[str]
    subject: str = Field(max_length=998)
    html: str
    text: str = ""
    from_email: str = Field(max_length=320)
    from_name: str = Field("", max_length=200)
    reply_to: str = Field("", max_length=320)


class ScheduleIn(In):
    at: datetime = Field(description="ISO 8601 with a time zone.")

    @field_validator("at")
    @classmethod
    def _storable_at(cls, value: datetime) -> datetime:
        return storable_datetime(value)


campaigns = Router(tags=["campaigns"])


def _campaign_errors(exc: Exception) -> HttpError:
    return HttpError(422, str(exc))


@campaigns.post(
    "",
    response={201: dict, 401: Error, 403: Error, 422: Unprocessable},
    summary="Create a draft campaign (campaigns:write)",
)
def create_campaign(request: HttpRequest, payload: CampaignIn):
    from campaigns.errors import CampaignError
    from campaigns.selectors import campaign_report
    from campaigns.services import campaign_create

    require(request, Scope.CAMPAIGNS_WRITE)
    try:
        campaign = campaign_create(
            name=payload.name,
            list_names=payload.lists,
            subject=payload.subject,
            html=payload.html,
            text=payload.text,
            from_email=payload.from_email,
            from_name=payload.from_name,
            reply_to=payload.reply_to,
        )
    except CampaignError as exc:
        raise _campaign_errors(exc) from None
    return Status(201, campaign_report(campaign_id=campaign.pk))


@campaigns.post(
    "/{campaign_id}/schedule",
    response={200: dict, 401: Error, 403: Error, 404: Error, 409: Error, 422: Unprocessable},
    summary="Schedule a draft campaign (campaigns:write)",
)
def schedule_campaign(request: HttpRequest, campaign_id: int, payload: ScheduleIn):
    from campaigns.errors import CampaignStateError, CampaignValidationError
    from campaigns.models import Campaign
    from campaigns.selectors import campaign_report
    from campaigns.services import campaign_schedule

    require(request, Scope.CAMPAIGNS_WRITE)
    try:
        campaign_schedule(campaign_id=campaign_id, at=payload.at)
    except Campaign.DoesNotExist:
        raise HttpError(404, _("no such campaign")) from None
    except CampaignStateError as exc:
        raise HttpError(409, str(exc)) from None
    except CampaignValidationError as exc:
        raise _campaign_errors(exc) from None
    return campaign_report(campaign_id=campaign_id)


@campaigns.get(
    "/{campaign_id}/report",
    response={200: dict, 401: Error, 403: Error, 404: Error},
    summary="Status and per-status delivery counts (campaigns:write)",
)
def report_campaign(request: HttpRequest, campaign_id: int):
    from campaigns.models import Campaign
    from campaigns.selectors import campaign_report

    require(request, Scope.CAMPAIGNS_WRITE)
    try:
        return campaign_report(campaign_id=campaign_id)
    except Campaign.DoesNotExist:
        raise HttpError(404, _("no such campaign")) from None


api.add_router("/messages", messages)
api.add_router("/contacts", contacts)
api.add_router("/campaigns", campaigns)
