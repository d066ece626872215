"""Sender domain check: SPF, DKIM and DMARC records, and what to publish when one is wrong.

Pure module (dnspython, no Django): ``check_domain`` takes the DKIM selectors to look for and
the name servers to ask, and returns a report of findings, each with the record to publish.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import dns.exception
import dns.name
import dns.resolver

from mailkit.dkim import dkim_txt_record

__all__ = ["DkimSelector", "DomainFinding", "DomainReport", "check_domain", "make_resolver"]

# RFC 7208 4.6.4: at most 10 terms that cause DNS lookups.
SPF_LOOKUP_LIMIT = 10
_SPF_LOOKUP_TERMS = ("include:", "a", "mx", "ptr", "exists:", "redirect=")


@dataclass(frozen=True)
class DkimSelector:
    selector: str
    algorithm: str = "rsa"  # rsa | ed25519
    public_key_b64: str = ""  # what Skylark signs with; empty: only check that a record exists


@dataclass(frozen=True)
class DomainFinding:
    severity: str  # error | warning | info | ok
    record: str  # spf | dkim:<selector> | dmarc
    message: str
    publish_name: str = ""
    publish_value: str = ""


@dataclass
class DomainReport:
    domain: str
    spf: list[str] = field(default_factory=list)
    dmarc: list[str] = field(default_factory=list)
    dkim: dict[str, list[str]] = field(default_factory=dict)
    findings: list[DomainFinding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def make_resolver(
    nameservers: Sequence[str] = (), *, timeout: float = 3.0
) -> dns.resolver.Resolver:
    """A resolver asking ``nameservers`` ("host" or "host:port"), or the system's."""
    if not nameservers:
        resolver = dns.resolver.Resolver()
    else:
        resolver = dns.resolver.Resolver(configure=False)
        hosts, ports = [], set()
        for server in nameservers:
            host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "")
            hosts.append(host or server)
            ports.add(int(port) if port else 53)
        resolver.nameservers = hosts
        resolver.port = ports.pop() if len(ports) == 1 else 53
    resolver.lifetime = timeout
    resolver.timeout = timeout
    return resolver


def _txt(resolver: dns.resolver.Resolver, name: str) -> list[str]:
    """TXT strings at ``name`` (multi-string records joined, RFC 7208 3.3); [] if none."""
    try:
        answer = resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]


def _spf_findings(domain: str, records: list[str]) -> list[DomainFinding]:
    suggestion = "v=spf1 a mx ~all  (add include:<your SMTP provider's SPF domain> before ~all)"
    if not records:
        return [
            DomainFinding(
                "error",
                "spf",
                "no SPF record: receivers cannot tell which servers may send for this domain",
                domain,
                suggestion,
            )
        ]
    if len(records) > 1:
        return [
            DomainFinding(
                "error",
                "spf",
                f"{len(records)} SPF records (RFC 7208 3.2: a permanent error); merge them",
                domain,
                records[0],
            )
        ]
    terms = records[0].split()[1:]
    found: list[DomainFinding] = []
    lookups = sum(
        1
        for term in terms
        if term.lstrip("+-~?").startswith(_SPF_LOOKUP_TERMS)
        and (term.lstrip("+-~?") in ("a", "mx", "ptr") or ":" in term or "=" in term)
    )
    if lookups > SPF_LOOKUP_LIMIT:
        found.append(
            DomainFinding(
                "error", "spf", f"{lookups} DNS-lookup terms (limit {SPF_LOOKUP_LIMIT}, RFC 7208)"
            )
        )
    alls = [t for t in terms if t.lstrip("+-~?") == "all"]
    if any(t in ("all", "+all") for t in alls):
        found.append(
            DomainFinding(
                "error", "spf", "+all lets anyone send as this domain", domain, suggestion
            )
        )
    elif not alls and not any(t.startswith("redirect=") for t in terms):
        found.append(DomainFinding("warning", "spf", "no 'all' term: the policy ends neutral"))
    if not found:
        found.append(DomainFinding("ok", "spf", f"SPF: {records[0]}"))
    return found


def _dkim_findings(domain: str, selector: DkimSelector, records: list[str]) -> list[DomainFinding]:
    name = f"{selector.selector}._domainkey.{domain}"
    label = f"dkim:{selector.selector}"
    expected = (
        dkim_txt_record(algorithm=selector.algorithm, public_key_b64=selector.public_key_b64)
        if selector.public_key_b64
        else ""
    )
    if not records:
        return [DomainFinding("error", label, f"no DKIM record at {name}", name, expected)]
    tags = {}
    for part in records[0].split(";"):
        key, _, value = part.strip().partition("=")
        tags[key.strip()] = "".join(value.split())
    published = tags.get("p", "")
    if not published:
        return [
            DomainFinding(
                "error", label, f"the key at {name} is revoked (empty p=)", name, expected
            )
        ]
    if selector.public_key_b64 and published != selector.public_key_b64:
        return [
            DomainFinding(
                "error",
                label,
                f"the key at {name} is not the one Skylark signs with",
                name,
                expected,
            )
        ]
    return [DomainFinding("ok", label, f"DKIM key published at {name}")]


def _dmarc_findings(domain: str, records: list[str]) -> list[DomainFinding]:
    name = f"_dmarc.{domain}"
    suggestion = f"v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}"
    if not records:
        return [
            DomainFinding(
                "error",
                "dmarc",
                "no DMARC record (Gmail and Yahoo require one from bulk senders)",
                name,
                suggestion,
            )
        ]
    if len(records) > 1:
        return [
            DomainFinding(
                "error", "dmarc", "several DMARC records: receivers ignore all", name, suggestion
            )
        ]
    tags = {}
    for part in records[0].split(";"):
        key, _, value = part.strip().partition("=")
        tags[key.strip().lower()] = value.strip()
    policy = tags.get("p", "")
    if policy not in ("none", "quarantine", "reject"):
        return [DomainFinding("error", "dmarc", f"invalid policy p={policy!r}", name, suggestion)]
    found = [DomainFinding("ok", "dmarc", f"DMARC: {records[0]}")]
    if policy == "none":
        found.append(
            DomainFinding("info", "dmarc", "p=none only monitors; move to quarantine when aligned")
        )
    if "rua" not in tags:
        found.append(DomainFinding("info", "dmarc", "no rua=: you receive no aggregate reports"))
    return found


def check_domain(
    domain: str,
    *,
    selectors: Sequence[DkimSelector] = (),
    resolver: dns.resolver.Resolver | None = None,
) -> DomainReport:
    """Look up SPF, DKIM (one record per selector) and DMARC of a From domain."""
    domain = dns.name.from_text(domain.strip().rstrip(".")).to_text(omit_final_dot=True).lower()
    resolver = resolver or make_resolver()
    report = DomainReport(domain=domain)
    try:
        report.spf = [r for r in _txt(resolver, domain) if r.lower().startswith("v=spf1")]
        report.findings += _spf_findings(domain, report.spf)
        for selector in selectors:
            name = f"{selector.selector}._domainkey.{domain}"
            records = [r for r in _txt(resolver, name) if "p=" in r]
            report.dkim[selector.selector] = records
            report.findings += _dkim_findings(domain, selector, records)
        if not selectors:
            report.findings.append(
                DomainFinding(
                    "warning",
                    "dkim",
                    "no DKIM key in Skylark for this domain: messages go out unsigned "
                    "(manage.py dkim_keygen)",
                )
            )
        report.dmarc = [
            r for r in _txt(resolver, f"_dmarc.{domain}") if r.lower().startswith("v=dmarc1")
        ]
        report.findings += _dmarc_findings(domain, report.dmarc)
    except dns.exception.DNSException as exc:
        report.findings.append(DomainFinding("error", "dns", f"DNS lookup failed: {exc}"))
    return report
