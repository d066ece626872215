"""Public sign-up pages: the hosted (and embeddable) subscribe form and the confirmation link.

The form POST is CSRF-exempt so that a plain <form> on any site can post to it; a honeypot
field and per-IP rate limits (contacts.signup_limits) stand in for the token. Every accepted
submission gets the same answer, whatever the address's state.
"""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from config.client_ip import client_ip
from contacts.models import SignupForm
from contacts.signup import HONEYPOT_FIELD, ConfirmOutcome, signup_confirm, signup_submit
from contacts.signup_limits import signup_mail_quota_wait, signup_rate_check


def _client(request: HttpRequest) -> tuple[str, str]:
    # Behind a reverse proxy, X-Forwarded-For only counts when EDM_TRUSTED_PROXIES names it.
    return client_ip(request.META), request.META.get("HTTP_USER_AGENT", "")[:500]


def _limited(
    request: HttpRequest, form: SignupForm, message: str, *, status: int, wait: int
) -> HttpResponse:
    response = render(
        request, "public/signup_limited.html", {"form": form, "message": message}, status=status
    )
    response["Retry-After"] = str(wait)
    return response


def _form_or_404(token: str) -> SignupForm:
    form = (
        SignupForm.objects.select_related("contact_list")
        .filter(public_token=token, enabled=True)
        .first()
    )
    if form is None:
        raise Http404("Unknown form")
    return form


def _done(request: HttpRequest, form: SignupForm) -> HttpResponse:
    if form.success_url:
        return HttpResponseRedirect(form.success_url)
    return render(request, "public/signup_done.html", {"form": form})


@csrf_exempt  # posted from other sites by a plain HTML form; see the module docstring
@require_http_methods(["GET", "HEAD", "POST"])
def signup_view(request: HttpRequest, token: str) -> HttpResponse:
    form = _form_or_404(token)
    context = {"form": form, "honeypot": HONEYPOT_FIELD, "values": {}, "errors": {}}
    if request.method != "POST":
        return render(request, "public/signup.html", context)
    ip, agent = _client(request)
    refusal = signup_rate_check(ip=ip)
    if refusal is not None:
        if refusal.per == "day":
            message = _("Too many sign-ups from your network today. Please try again tomorrow.")
        else:
            message = _(
                "Too many sign-ups from your network in the last minute. Please try again in a minute."
            )
        return _limited(request, form, message, status=429, wait=refusal.retry_after)
    if request.POST.get(HONEYPOT_FIELD):
        return _done(request, form)  # a bot: pretend it worked, do nothing
    # Whatever the address: the answer must not depend on whether it is known.
    wait = signup_mail_quota_wait() if form.double_opt_in else 0
    if wait:
        message = _("We are receiving too many sign-ups right now. Please try again later.")
        return _limited(request, form, message, status=503, wait=wait)
    result = signup_submit(form=form, data=request.POST.dict(), ip=ip, user_agent=agent)
    if not result.accepted:
        context.update(values=request.POST.dict(), errors=result.errors)
        return render(request, "public/signup.html", context, status=400)
    return _done(request, form)


@csrf_exempt  # the signed token in the URL is the credential
@require_http_methods(["GET", "HEAD", "POST"])
def signup_confirm_view(request: HttpRequest, token: str) -> HttpResponse:
    # A GET only shows a button: link scanners open every URL in a message, and a scanner
    # must not be able to confirm on someone's behalf.
    if request.method != "POST":
        return render(request, "public/signup_confirm.html", {"token": token})
    ip, agent = _client(request)
    outcome = signup_confirm(token=token, ip=ip, user_agent=agent)
    if outcome == ConfirmOutcome.INVALID:
        return render(request, "public/signup_confirm_invalid.html", status=404)
    return render(request, "public/signup_confirmed.html", {"outcome": outcome})
