"""Admin JSON endpoints of the content editors: thin, each calls one selector or service."""

from __future__ import annotations

from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, JsonResponse

from campaigns.content.variables import template_variables_offered, variables_as_json


@permission_required("campaigns.view_template", raise_exception=True)
def variables_view(request: HttpRequest) -> JsonResponse:
    """GET ?lists=1,2: the variables the contacts of those lists offer."""
    raw = request.GET.get("lists", "")
    list_ids = [int(part) for part in raw.split(",")[:100] if part.strip().isdigit()]
    variables = template_variables_offered(list_ids=list_ids)
    return JsonResponse({"variables": variables_as_json(variables)})
