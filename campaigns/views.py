"""Public pages reached from messages: unsubscribe (with RFC 8058 one-click)."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from campaigns.services import delivery_unsubscribe
from delivery.tokens import read_token


@csrf_exempt  # RFC 8058: the one-click POST comes from the mailbox provider, with no token.
@require_http_methods(["GET", "HEAD", "POST"])
def unsubscribe_view(request: HttpRequest, token: str) -> HttpResponse:
    delivery_id = read_token("unsubscribe", token)
    if delivery_id is None:
        raise Http404("Unknown link")
    if request.method == "POST":
        one_click = request.POST.get("List-Unsubscribe") == "One-Click"
        delivery_unsubscribe(
            delivery_id=delivery_id, source="one-click" if one_click else "unsubscribe page"
        )
        return render(request, "public/unsubscribed.html", status=200)
    # A GET never unsubscribes: link scanners follow every URL in a message.
    return render(request, "public/unsubscribe.html", {"token": token})
