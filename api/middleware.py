"""Under /api/v1/, every error answer is JSON: Django's own pages (404, 405, 500) included."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.translation import gettext as _

API_PREFIX = "/api/v1/"

# Headers a client needs to act on an error; the rest describe the page being replaced.
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


class JsonErrorsMiddleware:
    """Replace a non-JSON error answer under the API's prefix with ``{"detail": ...}``.

    The API's own handlers answer JSON; this covers what happens outside them: an unknown
    path (the URL resolver's 404), a method a route does not take (405), an exception that
    reached Django's handler (500), a middleware's refusal (400, 403, 413).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            response.status_code < 400
            or not request.path.startswith(API_PREFIX)
            or response.get("Content-Type", "").startswith("application/json")
        ):
            return response
        json_response = JsonResponse(
            {"detail": _detail(response.status_code)}, status=response.status_code
        )
        for header in _KEPT_HEADERS:
            if header in response:
                json_response[header] = response[header]
        return json_response


def _detail(status: int) -> str:
    if status == 404:
        return _("Not found.")
    if status == 405:
        return _("This method is not allowed here.")
    if status >= 500:
        return _("Internal error: the request was not completed.")
    return _("The request was refused (HTTP %(status)s).") % {"status": status}
