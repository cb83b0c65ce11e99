"""The PROXY header the proxy sends to the next hop (OutProxyProtocol, issue 23) is built
by the inverse of the parser it reads balancers' headers with: whatever `client_header` and
`encode` make, `ProxyHeaderParser` reads back as the same client and destination, however
the bytes are cut (docs/behaviour.md §11.13)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_proxsmtp.protocol.proxy_header import (
    NEED_MORE,
    ParsedProxyHeader,
    ProxyCommand,
    ProxyFamily,
    ProxyHeaderParser,
)
from trio_proxsmtp.protocol.proxy_header_build import client_header, encode

SMTP = b"220 next.example ESMTP\r\n"
ports = st.integers(min_value=0, max_value=65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(str)


def parse_in_pieces(data: bytes, cut: int) -> ParsedProxyHeader:
    parser = ProxyHeaderParser()
    first = parser.feed(data[:cut])
    if first is not NEED_MORE:
        assert isinstance(first, ParsedProxyHeader)
        return ParsedProxyHeader(first.header, first.remainder + data[cut:])
    result = parser.feed(data[cut:])
    assert isinstance(result, ParsedProxyHeader)
    return result


@given(
    version=st.sampled_from([1, 2]),
    family=st.sampled_from([(ipv4, ipv4), (ipv6, ipv6)]).flatmap(lambda f: st.tuples(*f)),
    client_port=ports,
    destination_port=ports,
    cut=st.integers(min_value=0, max_value=300),
)
def test_round_trip(
    version: int,
    family: tuple[str, str],
    client_port: int,
    destination_port: int,
    cut: int,
) -> None:
    client, destination = family
    header = client_header(version, client, client_port, destination, destination_port)
    data = encode(header)
    parsed = parse_in_pieces(data + SMTP, min(cut, len(data)))
    assert parsed.remainder == SMTP
    got = parsed.header
    assert got == header
    assert got.version == version and got.command is ProxyCommand.PROXY
    assert ipaddress.ip_address(got.source_address or "") == ipaddress.ip_address(client)
    assert got.source_port == client_port
    assert ipaddress.ip_address(got.destination_address or "") == ipaddress.ip_address(destination)
    assert got.destination_port == destination_port


@given(version=st.sampled_from([1, 2]), client=ipv4, port=ports)
def test_ipv4_mapped_client_goes_as_ipv4(version: int, client: str, port: int) -> None:
    header = client_header(version, "::ffff:" + client, port, "::ffff:192.0.2.1", 25)
    assert header.family is ProxyFamily.INET
    got = parse_in_pieces(encode(header), 0).header
    assert (got.source_address, got.destination_address) == (client, "192.0.2.1")


@pytest.mark.parametrize("version", [1, 2])
def test_a_destination_of_the_other_family_is_the_unspecified_address(version: int) -> None:
    header = client_header(version, "192.0.2.7", 4000, "2001:db8::1", 25)
    got = parse_in_pieces(encode(header), 0).header
    assert (got.source_address, got.source_port) == ("192.0.2.7", 4000)
    assert (got.destination_address, got.destination_port) == ("0.0.0.0", 0)
    header = client_header(version, "2001:db8::7", 4000, None, None)
    got = parse_in_pieces(encode(header), 0).header
    assert (got.destination_address, got.destination_port) == ("::", 0)


@pytest.mark.parametrize(("version", "data"), [(1, b"PROXY UNKNOWN\r\n"), (2, None)])
def test_a_client_without_an_ip_address_names_no_client(version: int, data: bytes | None) -> None:
    header = client_header(version, "", None, "/run/proxsmtpd.sock", None)
    encoded = encode(header)
    if data is not None:
        assert encoded == data
    got = parse_in_pieces(encoded, 0).header
    assert not got.has_client
    if version == 2:
        assert got.command is ProxyCommand.LOCAL
