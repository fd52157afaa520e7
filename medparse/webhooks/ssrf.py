"""Which webhook targets we may connect to (SSRF protection), checked on registration and on
every delivery.

Only ``http``/``https`` URLs without credentials. The host name is resolved once and EVERY
address must be public (one private A/AAAA record refuses the name: OWASP's advice against DNS
pinning); the sender then connects to the address that was checked, so a second lookup
(DNS rebinding) never happens. Non-canonical IPv4 spellings (``2130706433``, ``0x7f.1``,
``0177.0.0.1``, ``127.1``) are refused outright: no legitimate receiver uses them, and libraries
disagree on what they mean.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``(host, port) -> addresses``; injected in tests, ``system_resolver`` otherwise.
Resolver = Callable[[str, int], Sequence[str]]

MAX_URL_CHARS = 2048

#: Cloud metadata and platform services. Most are link-local or private anyway; Azure's wire
#: server (168.63.129.16) is a public address that only means something inside Azure.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "168.63.129.16", "100.100.100.200", "192.0.0.192", "fd00:ec2::254")
)
#: Allowed only with ``webhook_allow_private_targets`` (local development, tests).
PRIVATE_NETWORKS: tuple[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network], ...] = (
    ("private", ipaddress.ip_network("10.0.0.0/8")),
    ("private", ipaddress.ip_network("172.16.0.0/12")),
    ("private", ipaddress.ip_network("192.168.0.0/16")),
    ("cgnat", ipaddress.ip_network("100.64.0.0/10")),
    ("private", ipaddress.ip_network("fc00::/7")),
    ("private", ipaddress.ip_network("fec0::/10")),
)
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
#: Reasons a private-targets deployment still refuses: nothing legitimate lives there.
ALWAYS_REFUSED = frozenset({"unspecified", "multicast", "link_local", "metadata", "reserved", "non_canonical_ip"})


class UnsafeTarget(Exception):
    """The URL may not be called. ``reason`` is a stable code, ``message`` says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Target:
    scheme: str
    #: ASCII (IDNA) host without brackets, lower case
    host: str
    port: int
    #: path and query, exactly as given
    target: str
    #: the ``Host`` header value (host, plus the port when it is not the scheme's default)
    host_header: str
    literal_ip: IPAddress | None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64_PREFIX or (ip in IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def classify_address(ip: IPAddress) -> str | None:
    """None for a public unicast address, else why not: ``loopback``, ``private``, ``cgnat``,
    ``link_local``, ``multicast``, ``unspecified``, ``metadata`` or ``reserved``."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "link_local"
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return classify_address(embedded)
    if ip in METADATA_ADDRESSES:
        return "metadata"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_multicast:
        return "multicast"
    if ip.is_link_local:
        return "link_local"
    for reason, network in PRIVATE_NETWORKS:
        if ip.version == network.version and ip in network:
            return reason
    if not ip.is_global:
        # 0/8, 240/4, broadcast, documentation, benchmarking, IETF assignments, Teredo, ...
        return "reserved"
    return None


def refusal(ip: IPAddress, *, allow_private: bool) -> str | None:
    """The reason ``ip`` is refused under the current policy, or None."""
    reason = classify_address(ip)
    if reason is None or (allow_private and reason not in ALWAYS_REFUSED):
        return None
    return reason


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if labels and all(_NUMERIC_LABEL.match(label) for label in labels):
        raise UnsafeTarget("non_canonical_ip", f"{host!r} is not a canonical IP address; use a name or a dotted quad")
    return None


def parse_target(url: str) -> Target:
    """Syntax and scheme checks that need no DNS.

    Raises:
        UnsafeTarget: not an absolute http(s) URL, has credentials, or a non-canonical IP literal.
    """
    if len(url) > MAX_URL_CHARS:
        raise UnsafeTarget("invalid_url", f"longer than {MAX_URL_CHARS} characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        # httpx itself rejects some IPv4 spellings (``0177.0.0.1``); report them like the others.
        try:
            host = (urlsplit(url).hostname or "") if isinstance(url, str) else ""
        except ValueError:  # urlsplit too: "http://[::1" (an unclosed IPv6 bracket) was a 500
            host = ""
        _literal_ip(host)
        raise UnsafeTarget("invalid_url", f"not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise UnsafeTarget("invalid_scheme", "only http and https URLs are accepted")
    if parsed.userinfo:
        raise UnsafeTarget("credentials_in_url", "credentials in the URL are not accepted; verify the signature")
    if parsed.fragment:
        raise UnsafeTarget("invalid_url", "a webhook URL has no fragment")
    host = parsed.raw_host.decode("ascii").lower()
    if not host:
        raise UnsafeTarget("invalid_url", "the URL has no host")
    default_port = 443 if parsed.scheme == "https" else 80
    port = parsed.port or default_port
    literal = _literal_ip(host)
    shown = f"[{host}]" if isinstance(literal, ipaddress.IPv6Address) else host
    return Target(
        scheme=parsed.scheme,
        host=host,
        port=port,
        target=parsed.raw_path.decode("ascii"),
        host_header=shown if port == default_port else f"{shown}:{port}",
        literal_ip=literal,
    )


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolve_target(target: Target, *, allow_private: bool, resolver: Resolver | None = None) -> list[IPAddress]:
    """The addresses to connect to, every one of them allowed.

    Raises:
        UnsafeTarget: ``unresolvable`` when the name has no address, else the refusal reason.
    """
    if target.literal_ip is not None:
        addresses: list[IPAddress] = [target.literal_ip]
    else:
        try:
            raw = (resolver or system_resolver)(target.host, target.port)
            addresses = [ipaddress.ip_address(a) for a in raw]
        except (OSError, UnicodeError, ValueError):
            addresses = []
        if not addresses:
            raise UnsafeTarget("unresolvable", f"the host name {target.host!r} does not resolve")
    for ip in addresses:
        reason = refusal(ip, allow_private=allow_private)
        if reason is not None:
            raise UnsafeTarget(reason, f"{target.host!r} resolves to a {reason.replace('_', '-')} address")
    return addresses


def check_url(url: str, *, allow_private: bool, resolver: Resolver | None = None) -> Target:
    """``parse_target`` plus ``resolve_target``: what registration runs (in a thread)."""
    target = parse_target(url)
    resolve_target(target, allow_private=allow_private, resolver=resolver)
    return target
