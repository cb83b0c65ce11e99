"""Reading a PROXY header at accept: trusted sources, the deadline, what follows the header."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
import trio
import trio.testing

from trio_proxsmtp.common.networks import DEFAULT_TRUSTED_NETWORKS, is_trusted, parse_networks
from trio_proxsmtp.daemon.proxy_protocol import (
    InvalidProxyHeader,
    PrefixedStream,
    ProxyHeaderTimeout,
    ProxyProtocolError,
    UntrustedProxySource,
    read_proxy_header,
)
from trio_proxsmtp.protocol.errors import LocalError, ProxyError, RemoteError
from trio_proxsmtp.protocol.proxy_header import (
    ProxyCommand,
    ProxyFamily,
    ProxyHeader,
    ProxyTransport,
)
from trio_proxsmtp.protocol.proxy_header_build import encode_v1, encode_v2
from trio_proxsmtp.relay.client_info import ProxiedClient

CLIENT = ProxyHeader(
    2, ProxyCommand.PROXY, ProxyFamily.INET6, ProxyTransport.STREAM,
    "2001:db8::7", 40123, "2001:db8::25", 25,
)  # fmt: skip
EHLO = b"EHLO early.example\r\n"


async def send_in_pieces(
    stream: trio.abc.SendStream, data: bytes, pieces: int, pause: float
) -> None:
    step = max(1, len(data) // pieces)
    for start in range(0, len(data), step):
        await stream.send_all(data[start : start + step])
        await trio.sleep(pause)


@pytest.mark.parametrize("encode", [encode_v1, encode_v2])
async def test_header_in_pieces_then_smtp(
    encode: Callable[[ProxyHeader], bytes], autojump_clock: trio.testing.MockClock
) -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_in_pieces, send, encode(CLIENT) + EHLO, 7, 0.1)
        result = await read_proxy_header(
            receive, "127.0.0.1", DEFAULT_TRUSTED_NETWORKS, trio.current_time() + 5
        )
    assert result.client == ProxiedClient("2001:db8::7", 40123, "2001:db8::25", 25)
    assert not result.is_health_check
    # What was not in the remainder is still in the stream: together they are the EHLO.
    rest = result.remainder
    while len(rest) < len(EHLO):
        rest += await receive.receive_some()
    assert rest == EHLO


async def test_local_is_a_health_check_without_client() -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    await send.send_all(encode_v2(ProxyHeader(2, ProxyCommand.LOCAL, ProxyFamily.UNSPEC)))
    result = await read_proxy_header(
        receive, "::1", DEFAULT_TRUSTED_NETWORKS, trio.current_time() + 5
    )
    assert result.is_health_check
    assert result.client is None
    assert result.remainder == b""


async def test_untrusted_source_is_refused_before_reading() -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    await send.send_all(encode_v1(CLIENT))
    with pytest.raises(UntrustedProxySource, match=r"192\.0\.2\.9") as info:
        await read_proxy_header(
            receive, "192.0.2.9", DEFAULT_TRUSTED_NETWORKS, trio.current_time() + 5
        )
    assert info.value.reason == "proxy-untrusted"
    # Nothing was read: the forged header is still in the stream.
    assert await receive.receive_some() == encode_v1(CLIENT)


async def test_invalid_header_is_refused() -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    await send.send_all(EHLO)
    with pytest.raises(InvalidProxyHeader, match="did not start with a PROXY header") as info:
        await read_proxy_header(
            receive, "127.0.0.1", DEFAULT_TRUSTED_NETWORKS, trio.current_time() + 5
        )
    assert info.value.reason == "proxy-invalid"


async def test_close_before_the_end_of_the_header_is_refused() -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    await send.send_all(encode_v2(CLIENT)[:20])
    await send.aclose()
    with pytest.raises(InvalidProxyHeader, match="closed the connection"):
        await read_proxy_header(
            receive, "127.0.0.1", DEFAULT_TRUSTED_NETWORKS, trio.current_time() + 5
        )


async def test_late_header_times_out_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        # One byte a second: the header would take far longer than the 3 s deadline.
        nursery.start_soon(send_in_pieces, send, encode_v1(CLIENT), 1000, 1.0)
        with pytest.raises(ProxyHeaderTimeout) as info:
            await read_proxy_header(receive, "127.0.0.1", DEFAULT_TRUSTED_NETWORKS, start + 3)
        assert info.value.reason == "proxy-timeout"
        assert trio.current_time() == pytest.approx(start + 3)
        nursery.cancel_scope.cancel()


def test_trusted_sources() -> None:
    networks = parse_networks("10.1.0.0/16, 192.0.2.7 ,2001:db8::/32,[::1]")
    assert networks == (
        ipaddress.ip_network("10.1.0.0/16"),
        ipaddress.ip_network("192.0.2.7/32"),
        ipaddress.ip_network("2001:db8::/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert is_trusted("10.1.200.3", networks)
    assert is_trusted("::ffff:10.1.0.1", networks)  # an IPv4 peer on a dual-stack socket
    assert is_trusted("2001:db8:5::1", networks)
    assert not is_trusted("10.2.0.1", networks)
    assert not is_trusted("127.0.0.1", networks)
    assert is_trusted("127.0.0.53", DEFAULT_TRUSTED_NETWORKS)
    assert not is_trusted("::2", DEFAULT_TRUSTED_NETWORKS)
    assert is_trusted("", networks)  # a unix-socket peer: the file's permissions decide


@pytest.mark.parametrize(
    "text", ["", "10.0.0.0/8,", "10.0.0.1/8", "300.1.1.1", "localhost", "10.0.0.0/33"]
)
def test_bad_networks(text: str) -> None:
    with pytest.raises(ValueError):
        parse_networks(text)


async def test_prefixed_stream_gives_the_bytes_read_with_the_header_first() -> None:
    # ListenTLS behind a balancer: the client's TLS handshake may arrive in the same read
    # as the PROXY header; the TLS layer must see those bytes first, then the socket's.
    left, right = trio.testing.memory_stream_pair()
    stream = PrefixedStream(right, b"hello ")
    await left.send_all(b"world")
    assert await stream.receive_some(3) == b"hel"
    assert await stream.receive_some() == b"lo "
    assert await stream.receive_some() == b"world"
    await stream.send_all(b"back")
    assert await left.receive_some() == b"back"
    await stream.aclose()
    assert await left.receive_some() == b""


def test_refusals_are_the_peers_fault_with_their_labels() -> None:
    labels = {
        UntrustedProxySource: "proxy-untrusted",
        InvalidProxyHeader: "proxy-invalid",
        ProxyHeaderTimeout: "proxy-timeout",
    }
    for kind, reason in labels.items():
        error = kind("no PROXY header from 192.0.2.1 in time")
        assert isinstance(error, ProxyProtocolError) and isinstance(error, RemoteError)
        assert isinstance(error, ProxyError) and not isinstance(error, LocalError)
        assert error.reason == reason
        assert error.reply is None  # closed without a word
        assert str(error) == "no PROXY header from 192.0.2.1 in time"  # the log line
