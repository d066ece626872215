"""Public pages of the API app: the unsubscribe link of marketing transactional messages."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from api import selectors, services
from config.client_ip import client_ip


@csrf_exempt  # RFC 8058: the one-click POST comes from the mailbox provider, with no token.
@require_http_methods(["GET", "HEAD", "POST"])
def message_unsubscribe_view(request: HttpRequest, token: str) -> HttpResponse:
    """GET shows a confirmation (never unsubscribes: link scanners follow every URL); POST,
    the RFC 8058 one-click or the page's button, unsubscribes. The pages are campaigns'."""
    message = selectors.message_for_unsubscribe_token(token)
    if message is None:
        raise Http404(_("Unknown link"))
    if request.method != "POST":
        return render(request, "public/unsubscribe.html", {"token": token, "lists": []})
    # RFC 8058 section 3.1: body "List-Unsubscribe=One-Click", urlencoded or multipart.
    one_click = request.POST.get("List-Unsubscribe") == "One-Click"
    services.message_unsubscribe(
        message=message,
        source="one-click" if one_click else "unsubscribe page",
        ip=client_ip(request.META),
        user_agent=request.META.get("HTTP_USER_AGENT", "")[:500],
    )
    if one_click:
        return HttpResponse(_("Unsubscribed.") + "\n", content_type="text/plain")
    # No token: that page's "manage what you receive" link is a campaign's preferences page.
    return render(request, "public/unsubscribed.html", {"token": None})
