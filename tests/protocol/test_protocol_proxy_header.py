"""The PROXY protocol v1/v2 parser: known headers, every split of the bytes, garbage, bounds."""

from __future__ import annotations

import ipaddress
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_proxsmtp.protocol.errors import LocalError, RemoteProtocolError
from trio_proxsmtp.protocol.proxy_header import (
    MAX_V2_LENGTH,
    NEED_MORE,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    ParsedProxyHeader,
    ProxyCommand,
    ProxyFamily,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderParser,
    ProxyTransport,
    TLVType,
    parse_proxy_header,
)
from trio_proxsmtp.protocol.proxy_header_build import encode_v1, encode_v2

SMTP = b"EHLO client.example\r\n"


def parse_all(data: bytes) -> ParsedProxyHeader:
    result = parse_proxy_header(data)
    assert isinstance(result, ParsedProxyHeader)
    return result


def feed_in_pieces(data: bytes, cuts: list[int]) -> ParsedProxyHeader:
    """Feed `data` cut at `cuts`; every piece before the last must ask for more."""
    parser = ProxyHeaderParser()
    bounds = [0, *sorted(set(cuts)), len(data)]
    result: object = NEED_MORE
    for start, end in itertools.pairwise(bounds):
        assert result is NEED_MORE
        result = parser.feed(data[start:end])
    assert isinstance(result, ParsedProxyHeader)
    return result


# --- known headers, written out by hand from the protocol's text ----------------------------


def test_v1_tcp4() -> None:
    parsed = parse_all(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n" + SMTP)
    assert parsed.header == ProxyHeader(
        1, ProxyCommand.PROXY, ProxyFamily.INET, ProxyTransport.STREAM,
        "192.168.0.1", 56324, "192.168.0.11", 443,
    )  # fmt: skip
    assert parsed.header.has_client
    assert parsed.remainder == SMTP


def test_v1_tcp6_is_canonicalised() -> None:
    parsed = parse_all(b"PROXY TCP6 2001:DB8:0:0::1 ::1 1 25\r\n")
    assert parsed.header.family is ProxyFamily.INET6
    assert (parsed.header.source_address, parsed.header.source_port) == ("2001:db8::1", 1)
    assert (parsed.header.destination_address, parsed.header.destination_port) == ("::1", 25)
    assert parsed.remainder == b""


@pytest.mark.parametrize("line", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff:f...f:ffff 1 2\r\n"])
def test_v1_unknown_has_no_client(line: bytes) -> None:
    parsed = parse_all(line + SMTP)
    assert parsed.header.family is ProxyFamily.UNSPEC
    assert not parsed.header.has_client
    assert parsed.remainder == SMTP


def test_v1_longest_line_is_accepted() -> None:
    # The protocol's worst case: UNKNOWN with two full-length IPv6 addresses, 107 bytes.
    address = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = f"PROXY UNKNOWN {address} {address} 65535 65535\r\n".encode()
    assert len(line) == V1_MAX_LENGTH
    assert parse_all(line + SMTP).remainder == SMTP
    tcp6 = f"PROXY TCP6 {address} {address} 65535 65535\r\n".encode()
    assert parse_all(tcp6).header.source_port == 65535


def test_v2_ipv4_with_tlvs_from_bytes() -> None:
    data = (
        V2_SIGNATURE
        + bytes([0x21, 0x11])
        + struct.pack("!H", 12 + 3 + 4 + 3 + 2)
        + bytes([203, 0, 113, 7, 192, 0, 2, 25])
        + struct.pack("!HH", 40000, 25)
        + bytes([0x01, 0x00, 0x04]) + b"smtp"  # ALPN: kept
        + bytes([0xE0, 0x00, 0x02]) + b"zz"  # a custom type: skipped
    )  # fmt: skip
    parsed = parse_all(data + SMTP)
    header = parsed.header
    assert (header.version, header.command, header.family) == (
        2,
        ProxyCommand.PROXY,
        ProxyFamily.INET,
    )
    assert (header.source_address, header.source_port) == ("203.0.113.7", 40000)
    assert (header.destination_address, header.destination_port) == ("192.0.2.25", 25)
    assert header.tlvs == ((TLVType.ALPN, b"smtp"),)
    assert header.tlv(TLVType.ALPN) == b"smtp"
    assert header.tlv(TLVType.AUTHORITY) is None
    assert parsed.remainder == SMTP


def test_v2_local_ignores_the_address_block() -> None:
    data = V2_SIGNATURE + bytes([0x20, 0x11]) + struct.pack("!H", 12) + b"\xff" * 12
    parsed = parse_all(data + SMTP)
    assert parsed.header.command is ProxyCommand.LOCAL
    assert parsed.header.source_address is None
    assert not parsed.header.has_client
    assert parsed.remainder == SMTP


def test_v2_local_with_nothing_at_all() -> None:
    parsed = parse_all(V2_SIGNATURE + bytes([0x20, 0x00, 0, 0]))
    assert parsed.header.command is ProxyCommand.LOCAL
    assert parsed.header.family is ProxyFamily.UNSPEC


def test_v2_unspec_proxy_has_no_client() -> None:
    parsed = parse_all(V2_SIGNATURE + bytes([0x21, 0x00, 0, 0]))
    assert parsed.header.command is ProxyCommand.PROXY
    assert not parsed.header.has_client


def test_v2_unix_paths() -> None:
    block = b"/run/client.sock".ljust(108, b"\x00") + b"/run/proxsmtpd.sock".ljust(108, b"\x00")
    parsed = parse_all(V2_SIGNATURE + bytes([0x21, 0x31]) + struct.pack("!H", 216) + block)
    assert parsed.header.family is ProxyFamily.UNIX
    assert parsed.header.source_address == "/run/client.sock"
    assert parsed.header.destination_address == "/run/proxsmtpd.sock"
    assert parsed.header.source_port is None


def test_v2_ssl_tlv_says_the_client_used_tls() -> None:
    ssl_value = bytes([0x01]) + struct.pack("!I", 0)  # client: PP2_CLIENT_SSL, verify: 0
    header = ProxyHeader(
        2, ProxyCommand.PROXY, ProxyFamily.INET, ProxyTransport.STREAM,
        "192.0.2.1", 1, "192.0.2.2", 2, ((TLVType.SSL, ssl_value),),
    )  # fmt: skip
    assert parse_all(encode_v2(header)).header.client_tls
    plain = ProxyHeader(2, ProxyCommand.PROXY, ProxyFamily.INET, ProxyTransport.STREAM,
                        "192.0.2.1", 1, "192.0.2.2", 2)  # fmt: skip
    assert not parse_all(encode_v2(plain)).header.client_tls


# --- invalid headers --------------------------------------------------------------------------

INVALID = [
    b"EHLO x\r\n",
    b"GET / HTTP/1.0\r\n",
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n",  # LF only
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n",  # a field missing
    b"PROXY TCP4 192.168.0.1  192.168.0.11 56324 443\r\n",  # two spaces
    b"PROXY TCP4 ::1 ::1 1 2\r\n",  # IPv6 for TCP4
    b"PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n",  # IPv4 for TCP6
    b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",  # a scope id
    b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n",  # port out of range
    b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n",  # leading zero
    b"PROXY TCP4 1.2.3.4 1.2.3.4 -1 2\r\n",
    b"PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 1.2.3.\xff 1 2\r\n",
    b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n",
    V2_SIGNATURE + bytes([0x11, 0x11, 0, 12]) + bytes(12),  # version 1 in a v2 header
    V2_SIGNATURE + bytes([0x22, 0x11, 0, 12]) + bytes(12),  # command 2
    V2_SIGNATURE + bytes([0x21, 0x41, 0, 12]) + bytes(12),  # family 4
    V2_SIGNATURE + bytes([0x21, 0x13, 0, 12]) + bytes(12),  # transport 3
    V2_SIGNATURE + bytes([0x21, 0x11, 0, 11]) + bytes(11),  # IPv4 block too short
    V2_SIGNATURE + bytes([0x21, 0x21, 0, 12]) + bytes(12),  # IPv6 block too short
    V2_SIGNATURE + bytes([0x21, 0x11, 0, 14]) + bytes(14),  # 2 bytes: a truncated TLV
    V2_SIGNATURE + bytes([0x21, 0x11, 0, 16]) + bytes(12) + b"\x01\x00\x05x",  # TLV overruns
    b"\r\n\r\n\x00\r\nQUIX\n" + bytes(4),  # a wrong signature
]


@pytest.mark.parametrize("data", INVALID)
def test_invalid_headers_are_refused(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data)


def test_garbage_is_refused_at_the_first_byte_that_cannot_start_a_header() -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(b"E")
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(b"\r\n\r\n\x01")
    assert parse_proxy_header(b"PROX") is NEED_MORE
    assert parse_proxy_header(V2_SIGNATURE[:5]) is NEED_MORE


def test_v1_without_end_is_refused_at_its_limit() -> None:
    line = b"PROXY TCP4 " + b"1" * (V1_MAX_LENGTH - 11 - 1)
    assert parse_proxy_header(line) is NEED_MORE
    with pytest.raises(ProxyHeaderError, match="longer than"):
        parse_proxy_header(line + b"1")


def test_v2_over_the_length_limit_is_refused_from_its_fixed_part() -> None:
    fixed = V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", MAX_V2_LENGTH + 1)
    with pytest.raises(ProxyHeaderError, match="over the limit"):
        parse_proxy_header(fixed)  # refused without waiting for the announced bytes
    small = ProxyHeaderParser(max_v2_length=20)
    with pytest.raises(ProxyHeaderError, match="over the limit"):
        small.feed(V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 21))
    at_limit = V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", MAX_V2_LENGTH)
    body = bytes(12) + struct.pack("!BH", 0x04, MAX_V2_LENGTH - 15) + bytes(MAX_V2_LENGTH - 15)
    assert parse_all(at_limit + body).header.tlvs == ((TLVType.NOOP, bytes(MAX_V2_LENGTH - 15)),)


def test_a_finished_parser_cannot_be_fed() -> None:
    parser = ProxyHeaderParser()
    parser.feed(b"PROXY UNKNOWN\r\n")
    with pytest.raises(RuntimeError):
        parser.feed(b"more")


# --- properties -------------------------------------------------------------------------------

ports = st.integers(0, 65535)
ipv4 = st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(0, 2**32 - 1))
ipv6 = st.builds(lambda n: str(ipaddress.IPv6Address(n)), st.integers(0, 2**128 - 1))
known_tlv_types = st.sampled_from([int(t) for t in TLVType])
tlvs = st.lists(st.tuples(known_tlv_types, st.binary(max_size=40)), max_size=5).map(tuple)
unknown_tlvs = st.lists(
    st.tuples(st.integers(0, 255).filter(lambda t: t not in set(TLVType)), st.binary(max_size=40)),
    max_size=3,
).map(tuple)


@st.composite
def inet_headers(draw: st.DrawFn, version: int) -> ProxyHeader:
    family = draw(st.sampled_from([ProxyFamily.INET, ProxyFamily.INET6]))
    address = ipv4 if family is ProxyFamily.INET else ipv6
    return ProxyHeader(
        version,
        ProxyCommand.PROXY,
        family,
        ProxyTransport.STREAM,
        draw(address),
        draw(ports),
        draw(address),
        draw(ports),
        draw(tlvs) if version == 2 else (),
    )


unix_paths = st.text(st.characters(min_codepoint=1, max_codepoint=0x7F), min_size=1, max_size=107)
v2_headers = st.one_of(
    inet_headers(2),
    st.builds(
        lambda s, d, t: ProxyHeader(
            2, ProxyCommand.PROXY, ProxyFamily.UNIX, ProxyTransport.STREAM, s, None, d, None, t
        ),
        unix_paths,
        unix_paths,
        tlvs,
    ),
    st.builds(
        lambda f, t: ProxyHeader(2, ProxyCommand.LOCAL, f, t),
        st.sampled_from(list(ProxyFamily)),
        st.sampled_from(list(ProxyTransport)),
    ),
)
trailing = st.binary(max_size=64)


@given(inet_headers(1), trailing, st.lists(st.integers(0, 200)))
def test_v1_any_split_gives_the_same_header(
    header: ProxyHeader, rest: bytes, cuts: list[int]
) -> None:
    data = encode_v1(header) + rest
    cuts = [c for c in cuts if 0 < c < len(encode_v1(header))]
    parsed = feed_in_pieces(data, cuts)
    assert parsed == ParsedProxyHeader(header, rest)


@given(v2_headers, unknown_tlvs, trailing, st.lists(st.integers(0, 700)))
def test_v2_any_split_gives_the_same_header(
    header: ProxyHeader, unknown: tuple[tuple[int, bytes], ...], rest: bytes, cuts: list[int]
) -> None:
    encoded = encode_v2(header, unknown)
    cuts = [c for c in cuts if 0 < c < len(encoded)]
    parsed = feed_in_pieces(encoded + rest, cuts)
    assert parsed.remainder == rest
    assert parsed.header == header  # unknown TLVs skipped, known ones kept in order


@given(st.binary(max_size=300), st.lists(st.integers(1, 300), max_size=6))
@settings(max_examples=300)
def test_garbage_raises_only_the_typed_error_and_needs_bounded_input(
    garbage: bytes, cuts: list[int]
) -> None:
    parser = ProxyHeaderParser()
    fed = 0
    bounds = [0, *sorted({c for c in cuts if c < len(garbage)}), len(garbage)]
    try:
        for start, end in itertools.pairwise(bounds):
            result = parser.feed(garbage[start:end])
            fed = end
            if result is not NEED_MORE:
                return
    except ProxyHeaderError:
        return
    # Still waiting: never for more than the largest header there can be.
    assert fed < max(V1_MAX_LENGTH, 16 + MAX_V2_LENGTH)


@given(st.sampled_from([b"PROXY ", V2_SIGNATURE]), st.binary(max_size=120))
def test_garbage_after_a_valid_start_is_bounded_too(start: bytes, tail: bytes) -> None:
    try:
        result = parse_proxy_header(start + tail)
    except ProxyHeaderError:
        return
    if result is NEED_MORE:
        if start == b"PROXY ":
            assert len(start + tail) < V1_MAX_LENGTH
        else:
            length = struct.unpack_from("!H", tail, 2)[0] if len(tail) >= 4 else 0
            assert length <= MAX_V2_LENGTH


@given(inet_headers(2), st.integers(1, 1000))
def test_v2_oversized_is_refused(header: ProxyHeader, extra: int) -> None:
    padding = ((0x04, bytes(MAX_V2_LENGTH)),)  # a NOOP TLV that pushes it over the limit
    with pytest.raises(ProxyHeaderError, match="over the limit"):
        parse_proxy_header(encode_v2(header, padding)[: 16 + extra])


def test_an_invalid_header_is_the_peers_protocol_error() -> None:
    with pytest.raises(ProxyHeaderError) as info:
        parse_proxy_header(b"GET / HTTP/1.0\r\n")
    error = info.value
    assert isinstance(error, RemoteProtocolError) and not isinstance(error, LocalError)
    assert not isinstance(error, ValueError)
    assert error.reason == str(error) == "the connection did not start with a PROXY header"
    assert error.reply is None
