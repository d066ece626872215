"""Create an API key and print its secret once: `manage.py create_api_key NAME --scopes ...`."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from api import services
from api.errors import InvalidSenderDomain, ScopeError
from api.models import ApiKey, Scope


class Command(BaseCommand):
    help = "Create an API key for an application (the secret is printed once, never stored)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("application", nargs="?", default="")
        parser.add_argument(
            "--scopes",
            nargs="+",
            default=[Scope.MESSAGES_SEND, Scope.MESSAGES_READ],
            help=f"Any of: {', '.join(Scope.values)} (default: messages:send messages:read).",
        )
        parser.add_argument("--rate", type=int, default=None, help="Requests per minute.")
        parser.add_argument(
            "--from-domains",
            nargs="+",
            default=[],
            metavar="DOMAIN",
            help="Only these From domains may be used (exact match); default: any domain.",
        )
        parser.add_argument("--revoke", metavar="PREFIX", help="Revoke the key with this prefix.")

    def handle(
        self, *args, application: str, scopes, rate, revoke, from_domains, **options
    ) -> None:
        if revoke:
            key = ApiKey.objects.filter(prefix=revoke.removeprefix("sky_")[:8]).first()
            if key is None:
                raise CommandError(f"no key with prefix {revoke!r}")
            services.api_key_revoke(api_key=key)
            self.stdout.write(f"Revoked {key}")
            return
        if not application:
            raise CommandError("name the application")
        scopes = [s for item in scopes for s in item.replace(",", " ").split()]
        domains = [d for item in from_domains for d in item.replace(",", " ").split()]
        try:
            key, plaintext = services.api_key_create(
                application=application,
                scopes=scopes,
                rate_limit_per_minute=rate,
                allowed_from_domains=domains,
            )
        except (ScopeError, InvalidSenderDomain) as exc:
            raise CommandError(str(exc)) from None
        senders = f"; From: {', '.join(key.allowed_from_domains)}" if domains else ""
        self.stderr.write(
            f"API key for {application} ({', '.join(key.scopes)}{senders}); shown once:"
        )
        self.stdout.write(plaintext)
