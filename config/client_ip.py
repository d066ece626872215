"""The client's IP address of a request: X-Forwarded-For is believed only from trusted proxies."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping

from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A peer on a Unix socket has no IP address; naming "unix" in EDM_TRUSTED_PROXIES trusts it
# (a proxy on the same machine talking to gunicorn through a socket file).
UNIX_PEER = "unix"
# Hops read from the right of X-Forwarded-For at most: a real chain of proxies is a few long;
# the rest of a padded header is never read.
MAX_HOPS = 32


@functools.lru_cache(maxsize=8)
def trusted_networks(entries: tuple[str, ...]) -> tuple[tuple[IPNetwork, ...], bool]:
    """The trusted proxies' networks and whether a Unix-socket peer is trusted.

    Raises ValueError on an entry that is neither a CIDR, an address nor "unix" (checked when
    the settings load, so a typo stops the process instead of trusting nobody or everybody).
    """
    networks: list[IPNetwork] = []
    unix = False
    for entry in entries:
        if entry.lower() == UNIX_PEER:
            unix = True
            continue
        network = ipaddress.ip_network(entry, strict=False)
        mapped = network.network_address.ipv4_mapped if network.version == 6 else None
        if mapped is not None and network.prefixlen >= 96:
            # Peers are compared as IPv4 once unmapped (parse_address), so their networks are.
            network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}", strict=False)
        networks.append(network)
    return tuple(networks), unix


def parse_address(value: str) -> IPAddress | None:
    """An address as proxies write it ("203.0.113.7", "203.0.113.7:443", "[2001:db8::1]:443",
    "::ffff:203.0.113.7" seen as 203.0.113.7), or None when it is not one."""
    value = value.strip()
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(address: IPAddress | None, networks: Iterable[IPNetwork], unix: bool) -> bool:
    if address is None:
        return unix
    return any(address.version == n.version and address in n for n in networks)


def client_ip(meta: Mapping[str, str], *, trusted: Iterable[str] | None = None) -> str:
    """The address of the client that made the request ("" when there is none).

    The direct peer (REMOTE_ADDR) unless it is a trusted proxy (EDM_TRUSTED_PROXIES); then
    X-Forwarded-For is read from the right, each hop having been written by the trusted proxy
    after it, and the first untrusted address is the client. Anything left of that was written
    by the client itself and is never believed. A hop that is not an address stops the walk at
    the last proxy that was trusted.
    """
    entries = tuple(settings.EDM_TRUSTED_PROXIES if trusted is None else trusted)
    networks, unix = trusted_networks(entries)
    peer = parse_address(meta.get("REMOTE_ADDR", ""))
    if not _is_trusted(peer, networks, unix):
        return str(peer) if peer is not None else ""
    last = peer
    hops = meta.get("HTTP_X_FORWARDED_FOR", "").split(",")
    for hop in reversed(hops[-MAX_HOPS:]):
        address = parse_address(hop)
        if address is None:
            break
        last = address
        if not _is_trusted(address, networks, unix=False):
            return str(address)
    return str(last) if last is not None else ""
