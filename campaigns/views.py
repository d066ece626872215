"""Public pages reached from messages: open pixel, click redirect, web view, unsubscribe.

Every URL carries a token signed per purpose; a forged, tampered or expired token is a 404.
The tracking endpoints never touch the database on the hot path beyond a cached link lookup:
hits go to a buffer (campaigns.tracking) and are written in bulk.
"""

from __future__ import annotations

import base64
import time

from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from campaigns import tracking as tracking_services
from campaigns.sending.prepare import campaign_prepare
from campaigns.services import delivery_unsubscribe
from config.client_ip import client_ip
from delivery import tracking
from delivery.tokens import read_token

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = "no-store, no-cache, must-revalidate, max-age=0, private"


def _client(request: HttpRequest) -> tuple[str, str]:
    # The client's address: the peer's, or X-Forwarded-For through EDM_TRUSTED_PROXIES only.
    return request.META.get("HTTP_USER_AGENT", "")[:500], client_ip(request.META)


def _hit_push(
    request: HttpRequest,
    *,
    kind: str,
    delivery_id: int,
    link_id: int | None = None,
    campaign_id: int | None = None,
) -> None:
    """Buffer one open or click hit with who asked for it (agent, address, method)."""
    agent, ip = _client(request)
    tracking_services.tracking_hit_push(
        tracking.Hit(
            kind=kind,
            delivery_id=delivery_id,
            at=time.time(),
            user_agent=agent,
            ip=ip,
            method=request.method,
            link_id=link_id,
            campaign_id=campaign_id,
        )
    )


def open_pixel_view(request: HttpRequest, token: str) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    delivery_id = tracking.read_recipient_token(
        "open", token, max_age_seconds=tracking_services.TOKEN_MAX_AGE_SECONDS
    )
    if delivery_id is None:
        raise Http404("Unknown link")
    _hit_push(request, kind="open", delivery_id=delivery_id)
    response = HttpResponse(PIXEL, content_type="image/gif")
    response["Cache-Control"] = NO_STORE
    response["Pragma"] = "no-cache"
    response["Expires"] = "0"
    return response


def click_view(request: HttpRequest, token: str, link: str) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    recipient = tracking.read_click_token(
        token, max_age_seconds=tracking_services.TOKEN_MAX_AGE_SECONDS
    )
    target = tracking.read_link_token(link)
    if recipient is None or target is None:
        raise Http404("Unknown link")
    delivery_id, campaign_id = recipient
    link_campaign_id, link_id = target
    registered = tracking_services.tracked_link(link_id)
    # Only a link registered for this very campaign redirects; anything else is a 404.
    if (
        link_campaign_id != campaign_id
        or registered is None
        or registered.campaign_id != campaign_id
    ):
        raise Http404("Unknown link")
    _hit_push(
        request, kind="click", delivery_id=delivery_id, link_id=link_id, campaign_id=campaign_id
    )
    response = HttpResponseRedirect(registered.url)
    response["Cache-Control"] = NO_STORE
    response["Referrer-Policy"] = "no-referrer"
    return response


@require_http_methods(["GET", "HEAD"])
def webview_view(request: HttpRequest, token: str) -> HttpResponse:
    from campaigns.sending.claims import ClaimedDelivery
    from delivery.models import Delivery
    from mailkit.render import render_content

    delivery_id = tracking.read_recipient_token(
        "webview", token, max_age_seconds=tracking_services.TOKEN_MAX_AGE_SECONDS
    )
    if delivery_id is None:
        raise Http404("Unknown link")
    delivery = Delivery.objects.select_related("campaign", "contact").filter(pk=delivery_id).first()
    if delivery is None:
        raise Http404("Unknown link")
    contact = delivery.contact
    row = ClaimedDelivery(
        id=delivery.pk,
        contact_id=contact.pk,
        email=delivery.email,
        name=contact.name,
        attributes=contact.attributes,
        attempts=delivery.attempts,
        first_attempt_at=delivery.first_attempt_at,
    )
    prepared = campaign_prepare(delivery.campaign)
    # No pixel: reading the web view is not an open of the message.
    content = render_content(prepared.compiled, prepared.recipient_context(row, pixel=False))
    response = HttpResponse(content.html, content_type="text/html; charset=utf-8")
    response["Cache-Control"] = NO_STORE
    response["X-Robots-Tag"] = "noindex"
    # The message is the marketer's HTML: no scripts, no framing.
    response["Content-Security-Policy"] = "script-src 'none'; frame-ancestors 'none'"
    return response


@csrf_exempt  # RFC 8058: the one-click POST comes from the mailbox provider, with no token.
@require_http_methods(["GET", "HEAD", "POST"])
def unsubscribe_view(request: HttpRequest, token: str) -> HttpResponse:
    delivery_id = read_token("unsubscribe", token)
    if delivery_id is None:
        raise Http404("Unknown link")
    if request.method == "POST":
        # RFC 8058 section 3.1: body "List-Unsubscribe=One-Click", urlencoded or multipart.
        if request.POST.get("List-Unsubscribe") == "One-Click":
            user_agent, ip = _client(request)
            delivery_unsubscribe(
                delivery_id=delivery_id, source="one-click", ip=ip, user_agent=user_agent
            )
            return HttpResponse("Unsubscribed.\n", content_type="text/plain")
        if request.POST.get("action") == "preferences":
            keep = [int(v) for v in request.POST.getlist("lists") if v.isdigit()]
            tracking_services.contact_preferences_update(
                delivery_id=delivery_id, keep_list_ids=keep
            )
            lists = tracking_services.contact_preferences(delivery_id=delivery_id)
            return render(
                request, "public/preferences_saved.html", {"lists": lists, "token": token}
            )
        user_agent, ip = _client(request)
        delivery_unsubscribe(
            delivery_id=delivery_id, source="unsubscribe page", ip=ip, user_agent=user_agent
        )
        return render(request, "public/unsubscribed.html", {"token": token})
    # A GET or HEAD never unsubscribes: link scanners follow every URL in a message.
    lists = tracking_services.contact_preferences(delivery_id=delivery_id)
    return render(request, "public/unsubscribe.html", {"token": token, "lists": lists})
