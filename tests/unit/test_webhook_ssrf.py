"""The SSRF policy: the address classifier, URL parsing and resolution (with a fake resolver)."""

from __future__ import annotations

import ipaddress

import pytest

from medparse.webhooks.ssrf import UnsafeTarget, check_url, classify_address, parse_target, refusal, resolve_target

REFUSED = {
    "127.0.0.1": "loopback",
    "127.255.255.254": "loopback",
    "::1": "loopback",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "172.31.255.255": "private",
    "192.168.1.1": "private",
    "fc00::1": "private",
    "fd12:3456::1": "private",
    "fec0::1": "private",
    "100.64.0.1": "cgnat",
    "100.127.255.255": "cgnat",
    "169.254.0.1": "link_local",
    "fe80::1": "link_local",
    "fe80::1%1": "link_local",
    "169.254.169.254": "metadata",
    "169.254.170.2": "metadata",
    "168.63.129.16": "metadata",
    "100.100.100.200": "metadata",
    "192.0.0.192": "metadata",
    "fd00:ec2::254": "metadata",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "ff02::1": "multicast",
    "255.255.255.255": "reserved",
    "240.0.0.1": "reserved",
    "0.1.2.3": "reserved",
    "192.0.2.10": "reserved",
    "198.18.0.1": "reserved",
    "2001:db8::1": "reserved",
    # IPv4 inside IPv6: mapped, NAT64, 6to4, IPv4-compatible
    "::ffff:127.0.0.1": "loopback",
    "::ffff:10.0.0.1": "private",
    "::ffff:169.254.169.254": "metadata",
    "::ffff:0.0.0.0": "unspecified",
    "64:ff9b::7f00:1": "loopback",
    "64:ff9b::a9fe:a9fe": "metadata",
    "2002:7f00:1::1": "loopback",
    "2002:a00:1::1": "private",
    "::127.0.0.1": "loopback",
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "172.32.0.1", "100.128.0.1", "2606:4700:4700::1111",
          "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize(("address", "reason"), sorted(REFUSED.items()))
def test_non_public_addresses_are_classified_with_a_reason(address: str, reason: str) -> None:
    assert classify_address(ipaddress.ip_address(address)) == reason
    assert refusal(ipaddress.ip_address(address), allow_private=False) == reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_unicast_addresses_are_allowed(address: str) -> None:
    assert classify_address(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.0.0.1", "192.168.0.10", "100.64.1.1", "fd00::1"])
def test_allow_private_admits_loopback_and_private_networks(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), allow_private=True) is None


@pytest.mark.parametrize(
    "address", ["169.254.169.254", "168.63.129.16", "fe80::1", "0.0.0.0", "::", "224.0.0.1", "240.0.0.1"]
)
def test_allow_private_still_refuses_metadata_link_local_unspecified_multicast_reserved(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), allow_private=True) is not None


@pytest.mark.parametrize(
    "url",
    ["http://2130706433/", "http://0x7f000001/", "http://0177.0.0.1/", "http://127.1/", "http://0x7f.0.0.1/",
     "http://017700000001/", "http://0x7f.1:8080/hook", "https://10.1/", "http://0/"],
)
def test_decimal_hex_octal_and_short_ipv4_forms_are_refused(url: str) -> None:
    with pytest.raises(UnsafeTarget) as info:
        parse_target(url)
    assert info.value.reason == "non_canonical_ip"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.org/hook", "invalid_scheme"),
        ("file:///etc/passwd", "invalid_scheme"),
        ("gopher://example.org/", "invalid_scheme"),
        ("javascript:alert(1)", "invalid_scheme"),
        ("https://user:pass@example.org/hook", "credentials_in_url"),
        ("https://example.org/hook#frag", "invalid_url"),
        ("/relative/path", "invalid_scheme"),
        ("https:///nohost", "invalid_url"),
        ("https://example.org/" + "a" * 3000, "invalid_url"),
    ],
)
def test_only_absolute_http_urls_without_credentials_are_accepted(url: str, reason: str) -> None:
    with pytest.raises(UnsafeTarget) as info:
        parse_target(url)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://10.0.0.8/", "private"),
        ("http://100.64.0.1/", "cgnat"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:7f00:1]/", "loopback"),
        ("http://[fe80::1]/", "link_local"),
        ("http://224.0.0.1/", "multicast"),
    ],
)
def test_literal_ip_urls_are_checked_without_any_lookup(url: str, reason: str) -> None:
    def no_dns(host: str, port: int) -> list[str]:
        raise AssertionError("a literal IP must not be resolved")

    with pytest.raises(UnsafeTarget) as info:
        check_url(url, allow_private=False, resolver=no_dns)
    assert info.value.reason == reason


def test_a_name_is_refused_if_any_of_its_addresses_is_not_public() -> None:
    def resolver(host: str, port: int) -> list[str]:
        return {"mixed.example": ["93.184.216.34", "10.0.0.7"], "public.example": ["93.184.216.34", "2606:4700::1"],
                "meta.example": ["169.254.169.254"]}[host]

    assert [str(a) for a in resolve_target(parse_target("https://public.example/h"), allow_private=False,
                                           resolver=resolver)] == ["93.184.216.34", "2606:4700::1"]
    for host, reason in (("mixed.example", "private"), ("meta.example", "metadata")):
        with pytest.raises(UnsafeTarget) as info:
            check_url(f"https://{host}/h", allow_private=False, resolver=resolver)
        assert info.value.reason == reason


def test_a_name_that_does_not_resolve_is_unresolvable() -> None:
    def resolver(host: str, port: int) -> list[str]:
        raise OSError("NXDOMAIN")

    with pytest.raises(UnsafeTarget) as info:
        check_url("https://nowhere.example/h", allow_private=False, resolver=resolver)
    assert info.value.reason == "unresolvable"


def test_the_system_resolver_refuses_localhost() -> None:
    with pytest.raises(UnsafeTarget) as info:
        check_url("http://localhost:9/hook", allow_private=False)
    assert info.value.reason == "loopback"


def test_parse_target_keeps_host_header_port_and_path() -> None:
    target = parse_target("https://Hooks.Example.org:8443/in/hook?x=1&y=2")
    assert (target.scheme, target.host, target.port) == ("https", "hooks.example.org", 8443)
    assert target.host_header == "hooks.example.org:8443" and target.target == "/in/hook?x=1&y=2"
    assert parse_target("http://[2606:4700::1]/").host_header == "[2606:4700::1]"
    assert parse_target("https://bücher.example/").host == "xn--bcher-kva.example"
