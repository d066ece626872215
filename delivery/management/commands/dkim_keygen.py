"""`manage.py dkim_keygen DOMAIN [--selector S] [--algorithm rsa|ed25519] [--force] [--json]`."""

from __future__ import annotations

import json
import re

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from delivery.models import DkimAlgorithm, DkimKey
from mailkit.compose import validate_address
from mailkit.dkim import dkim_txt_record, generate_dkim_key
from mailkit.errors import InvalidAddressError

# Same shape DkimSigner accepts: a DNS label (dots allowed for sub-selectors).
_SELECTOR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")


class Command(BaseCommand):
    help = (
        "Create a DKIM key for a sending domain (private key stored encrypted) and print the "
        "DNS TXT record to publish at <selector>._domainkey.<domain>."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("domain", help="the From domain, e.g. news.example.com")
        parser.add_argument("--selector", default="skylark", help="default: skylark")
        parser.add_argument("--algorithm", choices=DkimAlgorithm.values, default=DkimAlgorithm.RSA)
        parser.add_argument(
            "--force",
            action="store_true",
            help="replace the key of an existing (domain, selector): the old TXT record stops "
            "verifying, so publish the new one before sending",
        )
        parser.add_argument("--json", action="store_true", help="one JSON object on stdout")

    def handle(self, *args: object, **options: object) -> None:
        domain = _domain(str(options["domain"]))
        selector = str(options["selector"])
        if not _SELECTOR.fullmatch(selector):
            raise CommandError(f"invalid selector {selector!r}: letters, digits, '.', '-', '_'")
        algorithm = str(options["algorithm"])
        private_pem, public_b64 = generate_dkim_key(algorithm=algorithm)
        with transaction.atomic():
            key = DkimKey.objects.select_for_update().filter(domain=domain, selector=selector)
            key = key.first()
            if key is not None and not options["force"]:
                raise CommandError(
                    f"{key.dns_name} already has a key (created {key.created_at:%Y-%m-%d}); "
                    "use another --selector, or --force to replace it"
                )
            key = key or DkimKey(domain=domain, selector=selector)
            key.algorithm = algorithm
            key.enabled = True
            key.public_key = public_b64
            key.set_private_key(private_pem)
            key.save()
        txt = dkim_txt_record(algorithm=algorithm, public_key_b64=public_b64)
        if options["json"]:
            record = {"domain": domain, "selector": selector, "algorithm": algorithm}
            record |= {"dns_name": key.dns_name, "txt": txt}
            self.stdout.write(json.dumps(record))
            return
        self.stdout.write(f"Created a {algorithm} DKIM key for {domain} (selector {selector}).")
        self.stdout.write("Publish this TXT record, then messages from this domain verify:\n")
        self.stdout.write(f"  name:  {key.dns_name}")
        self.stdout.write(f"  value: {txt}\n")
        if len(txt) > 255:
            self.stdout.write(
                "The value is longer than 255 characters: if your DNS provider asks for "
                "strings, split it into quoted 255-character chunks:"
            )
            self.stdout.write(
                "  " + " ".join(f'"{txt[i : i + 255]}"' for i in range(0, len(txt), 255))
            )


def _domain(value: str) -> str:
    value = value.strip().rstrip(".").lower()
    try:
        # The ASCII (IDNA) form is what DNS and the d= tag use.
        return validate_address(f"dkim@{value}").rpartition("@")[2]
    except InvalidAddressError as exc:
        raise CommandError(f"invalid domain {value!r}") from exc
