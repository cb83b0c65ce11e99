"""Address forms of spec §5.1, the bracketed IPv6 extension, and host formatting."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_proxsmtp.common.address import (
    Address,
    AddressKind,
    format_host,
    parse_address,
    resolve_tcp,
)


@pytest.mark.parametrize(
    ("text", "kind", "host", "port", "path", "port_only"),
    [
        ("25", AddressKind.TCP, None, 25, None, True),
        ("65535", AddressKind.TCP, None, 65535, None, True),
        ("1.2.3.4", AddressKind.TCP, "1.2.3.4", 99, None, False),
        ("1.2.3.4:25", AddressKind.TCP, "1.2.3.4", 25, None, False),
        ("0.0.0.0:2525", AddressKind.TCP, "0.0.0.0", 2525, None, True),
        ("/run/proxsmtpd.sock", AddressKind.UNIX, None, 0, "/run/proxsmtpd.sock", False),
        ("relative/sock", AddressKind.UNIX, None, 0, "relative/sock", False),
        ("mail.example.org", AddressKind.TCP, "mail.example.org", 99, None, False),
        ("localhost:2525", AddressKind.TCP, "localhost", 2525, None, False),
        ("[::1]:25", AddressKind.TCP, "::1", 25, None, False),
        ("[::1]", AddressKind.TCP, "::1", 99, None, False),
        ("[::]:25", AddressKind.TCP, "::", 25, None, True),
        ("[2001:db8::5]:587", AddressKind.TCP, "2001:db8::5", 587, None, False),
    ],
)
def test_forms(
    text: str, kind: AddressKind, host: str | None, port: int, path: str | None, port_only: bool
) -> None:
    address = parse_address(text, 99)
    assert address == Address(kind, host, port, path, text)
    assert address.is_port_only is port_only
    assert str(address) == text


def test_surrounding_whitespace_is_trimmed() -> None:
    assert parse_address("  1.2.3.4:25 \r", 99).port == 25


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("0", "out of range"),
        ("65536", "out of range"),
        ("123456", "invalid port"),
        ("1.2.3.4:0", "out of range"),
        ("1.2.3.4:65536", "out of range"),
        ("1.2.3.4:", "invalid port"),
        ("1.2.3.4:x", "invalid port"),
        ("256.1.1.1", "invalid IPv4"),
        ("1.2.3.4:25 # comment", "invalid port"),
        ("[::1]:0", "out of range"),
        ("[::1", "not a port"),
        ("[zz::1]:25", "invalid IPv6"),
        ("::1", "in brackets"),
        ("1host", "not a port"),
        ("host name", "not a port"),
        ("a\\b", "not a port"),
        ("host:port", "invalid port"),
        ("host:99999", "out of range"),
        ("a" * 255, "too long"),
        ("/" + "s" * 107, "too long"),
    ],
)
def test_errors(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_address(text, 25)


def test_longest_unix_path_and_host_name_are_accepted() -> None:
    assert parse_address("/" + "s" * 106, 25).kind is AddressKind.UNIX
    assert parse_address("a" * 254, 25).host == "a" * 254


@given(st.integers(min_value=1, max_value=65535))
def test_every_valid_port(port: int) -> None:
    assert parse_address(str(port), 1).port == port
    assert parse_address(f"10.0.0.1:{port}", 1).port == port
    assert parse_address(f"[fe80::1]:{port}", 1).port == port


def test_resolve_literals_and_port_only() -> None:
    assert resolve_tcp(parse_address("127.0.0.1:25", 25)) == [(socket.AF_INET, ("127.0.0.1", 25))]
    v6 = resolve_tcp(parse_address("[::1]:26", 25))
    assert [(family, sockaddr[:2]) for family, sockaddr in v6] == [(socket.AF_INET6, ("::1", 26))]
    assert resolve_tcp(parse_address("10025", 25)) == [(socket.AF_INET, ("0.0.0.0", 10025))]


def test_resolve_host_name() -> None:
    results = resolve_tcp(parse_address("localhost:2525", 25))
    assert results
    assert all(sockaddr[1] == 2525 for _family, sockaddr in results)
    assert len(results) == len(set(results))


def test_resolve_unknown_name_raises_oserror() -> None:
    with pytest.raises(OSError):
        resolve_tcp(parse_address("no-such-host.invalid", 25))


def test_resolve_unix_is_refused() -> None:
    with pytest.raises(ValueError):
        resolve_tcp(parse_address("/run/x.sock", 25))


@pytest.mark.parametrize(
    ("sockaddr", "text"),
    [
        (("127.0.0.1", 25), "127.0.0.1"),
        (("::1", 25, 0, 0), "::1"),
        ("/run/x.sock", "/run/x.sock"),
        ("", ""),
        (b"", ""),
        (None, ""),
    ],
)
def test_format_host(sockaddr: object, text: str) -> None:
    assert format_host(sockaddr) == text
