"""Skylark's own `check --deploy` warnings: settings that Django's checks cannot see."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def production_settings_check(**kwargs: Any) -> list[Warning]:
    warnings = []
    if not settings.EDM_SECRET_KEY_FROM_ENV:
        warnings.append(
            Warning(
                "SECRET_KEY is not set in the environment: this machine signs links with a key "
                "of its own (var/secret_key), which other web and worker machines do not share.",
                hint="Set SECRET_KEY, the same on every machine (50 or more random characters).",
                id="skylark.W001",
            )
        )
    if not settings.EDM_PUBLIC_URL.startswith("https://"):
        warnings.append(
            Warning(
                "EDM_PUBLIC_URL is not an https:// address: unsubscribe, tracking and sign-up "
                "links in every message would travel in clear text.",
                hint="Set EDM_PUBLIC_URL=https://<your host> (and EDM_HTTPS=true).",
                id="skylark.W002",
            )
        )
    return warnings
