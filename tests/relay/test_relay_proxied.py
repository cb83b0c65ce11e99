"""ProxyProtocol: on: the header's client replaces the socket's peer in the whole session.

The proxy runs in-process (run_proxy) on real loopback sockets; FakeClient sends the header
as a load balancer would.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from trio_proxsmtp.common.address import Address, AddressKind
from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.daemon.listeners import bind_listeners
from trio_proxsmtp.daemon.prometheus import PrometheusMetrics
from trio_proxsmtp.daemon.server import Server
from trio_proxsmtp.protocol.proxy_header import (
    ProxyCommand,
    ProxyFamily,
    ProxyHeader,
    ProxyTransport,
)
from trio_proxsmtp.protocol.proxy_header_build import encode_v1, encode_v2
from trio_proxsmtp.relay.client_info import (
    ClientInfo,
    ProxiedClient,
    ProxyResult,
    from_proxy_header,
)
from trio_proxsmtp.testing import FakeUpstream, open_client, run_proxy

CLIENT_V4 = ProxyHeader(
    1, ProxyCommand.PROXY, ProxyFamily.INET, ProxyTransport.STREAM,
    "203.0.113.7", 40123, "198.51.100.25", 25,
)  # fmt: skip
CLIENT_V6 = ProxyHeader(
    2, ProxyCommand.PROXY, ProxyFamily.INET6, ProxyTransport.STREAM,
    "2001:db8::7", 40123, "2001:db8::25", 25,
)  # fmt: skip
LOCAL = ProxyHeader(2, ProxyCommand.LOCAL, ProxyFamily.UNSPEC)
MESSAGE = b"Subject: t\r\n\r\nbody\r\n"


def client_filter(tmp_path: Path) -> Path:
    script = tmp_path / "client-filter.sh"
    script.write_text("#!/bin/sh\nprintf 'X-Client: %s\\r\\n' \"$CLIENT\"\nexec cat\n")
    script.chmod(0o755)
    return script


def summaries(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The summary lines logged, without the connection id."""
    lines = [r.getMessage().split(": ", 1)[-1] for r in caplog.records]
    return [line for line in lines if line.startswith("client=")]


@pytest.mark.parametrize(
    ("encode", "header", "xclient_addr"),
    [
        (encode_v1, CLIENT_V4, "203.0.113.7"),
        (encode_v2, CLIENT_V4, "203.0.113.7"),
        (encode_v2, CLIENT_V6, "IPv6:2001:db8::7"),
    ],
)
async def test_the_header_client_is_the_client_everywhere(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    encode: Callable[[ProxyHeader], bytes],
    header: ProxyHeader,
    xclient_addr: str,
) -> None:
    caplog.set_level(logging.INFO, LOGGER_NAME)
    config = (
        "ProxyProtocol: on\nXClient: on\n"
        f"FilterCommand: {client_filter(tmp_path)}\nHeader: X-Seen: %i on %l\n"
    )
    address = header.source_address
    with trio.fail_after(30):
        # The client talks at once, in the header's segment: the remainder is its EHLO.
        first = encode(header) + b"EHLO early\r\n"
        async with (
            FakeUpstream() as up,
            run_proxy(config, upstream=up) as proxy,
            proxy.connect(proxy_header=first) as c,
        ):
            assert (await c.greeting()).code == 220
            assert (await c.read_reply()).code == 250
            replies = await c.send_message("a@x", ["b@x"], MESSAGE)
            assert replies[-1].code == 250
            await c.quit()
    xclient = [cmd for cmd in up.commands if cmd.startswith(b"XCLIENT")]
    assert len(xclient) == 1
    assert f"ADDR={xclient_addr} ".encode() in xclient[0]
    assert b"HELO=early" in xclient[0]
    message = up.transactions[0].message
    assert f"X-Client: {address}\r\n".encode() in message
    assert f"X-Seen: {address} on {header.destination_address}\r\n".encode() in message
    [summary] = summaries(caplog)
    # The balancer's address (127.0.0.1) is the one that connected: via= (docs/behaviour.md
    # §9.2), and elsewhere only in relay= (the upstream's, also local).
    assert summary.startswith(
        f"client={address}, via=127.0.0.1, from=<a@x>, to=<b@x>, status=FILTERED, "
    )
    assert any(f"accepted connection from: {address}" in r.getMessage() for r in caplog.records)
    assert "127.0.0.1" not in summary.split(", relay=")[0].replace("via=127.0.0.1, ", "")


async def test_a_local_health_check_is_served_without_summary_or_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER_NAME)
    with trio.fail_after(30):
        async with FakeUpstream() as up, run_proxy("ProxyProtocol: on", upstream=up) as proxy:
            async with proxy.connect(proxy_header=encode_v2(LOCAL)) as c:
                assert (await c.command("EHLO haproxy-check.localdomain")).code == 250
                assert (await c.quit()).code == 221
            await up.wait_until(lambda: up.connections == 1 and up.active_connections == 0)
    assert summaries(caplog) == []
    # (The start-up warning about no FilterCommand is not the session's.)
    session = [r for r in caplog.records if r.funcName not in ("serve", "filtering_note")]
    assert not [r for r in session if r.levelno >= logging.WARNING]
    # LOCAL names no client: the socket's own address is used.
    assert any("accepted connection from: 127.0.0.1" in r.getMessage() for r in caplog.records)


async def test_a_forged_header_from_an_untrusted_address_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, LOGGER_NAME)
    metrics = PrometheusMetrics()
    config = "ProxyProtocol: on\nProxyProtocolFrom: 192.0.2.0/24"
    with trio.fail_after(30):
        async with (
            FakeUpstream() as up,
            run_proxy(config, upstream=up, metrics=metrics) as proxy,
            proxy.connect(proxy_header=encode_v1(CLIENT_V4)) as c,
        ):
            assert await c.read_eof() == b""  # closed without a banner
    assert up.connections == 0
    errors = [r.getMessage().split(": ", 1)[1] for r in caplog.records if r.levelno >= 40]
    assert errors == [
        "PROXY header not accepted from 127.0.0.1 (ProxyProtocolFrom): connection closed"
    ]
    assert "203.0.113.7" not in caplog.text
    body = metrics.exposition()[0].decode()
    assert 'proxsmtpd_connections_refused_total{reason="proxy-untrusted"} 1.0' in body


async def test_a_connection_without_a_header_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, LOGGER_NAME)
    metrics = PrometheusMetrics()
    with trio.fail_after(30):
        async with (
            FakeUpstream() as up,
            run_proxy("ProxyProtocol: on", upstream=up, metrics=metrics) as proxy,
            proxy.connect(proxy_header=b"EHLO plain.example\r\n") as c,
        ):
            assert await c.read_eof() == b""
    assert up.connections == 0
    errors = [r.getMessage().split(": ", 1)[1] for r in caplog.records if r.levelno >= 40]
    assert len(errors) == 1 and errors[0].startswith("invalid PROXY header from 127.0.0.1")
    body = metrics.exposition()[0].decode()
    assert 'proxsmtpd_connections_refused_total{reason="proxy-invalid"} 1.0' in body
    assert "proxsmtpd_connections_active 0.0" in body  # never a session


async def test_a_silent_connection_is_closed_at_the_header_deadline(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER_NAME)
    metrics = PrometheusMetrics()
    with trio.fail_after(30):
        async with (
            FakeUpstream() as up,
            run_proxy("ProxyProtocol: on", upstream=up, metrics=metrics) as proxy,
            proxy.connect(timeout=60) as c,
        ):
            start = trio.current_time()
            assert await c.read_eof() == b""
            waited = trio.current_time() - start
    assert 4.9 <= waited <= 5.5
    assert up.connections == 0
    assert "no PROXY header from 127.0.0.1 in time: connection closed" in caplog.text
    body = metrics.exposition()[0].decode()
    assert 'proxsmtpd_connections_refused_total{reason="proxy-timeout"} 1.0' in body


async def test_a_connection_waiting_for_its_header_counts_toward_max_connections() -> None:
    metrics = PrometheusMetrics()
    with trio.fail_after(30):
        async with (
            FakeUpstream() as up,
            run_proxy(
                "ProxyProtocol: on\nMaxConnections: 1", upstream=up, metrics=metrics
            ) as proxy,
            proxy.connect() as waiting,
            proxy.connect() as second,
        ):
            busy = await second.greeting()
            assert busy.code == 421 and b"too many connections" in busy.to_bytes()
            await waiting.send(encode_v1(CLIENT_V4))
            assert (await waiting.greeting()).code == 220
    body = metrics.exposition()[0].decode()
    assert 'proxsmtpd_connections_refused_total{reason="busy"} 1.0' in body
    assert "proxsmtpd_connections_accepted_total 2.0" in body


async def test_transparent_proxying_goes_to_the_header_destination() -> None:
    with trio.fail_after(30):
        async with FakeUpstream() as up, run_proxy("ProxyProtocol: on\nTransparentProxy: on") as p:
            # The client connected to the upstream's address; the balancer sent it to us.
            header = encode_v2(
                ProxyHeader(
                    2,
                    ProxyCommand.PROXY,
                    ProxyFamily.INET,
                    ProxyTransport.STREAM,
                    "203.0.113.7",
                    40123,
                    "127.0.0.1",
                    up.port,
                )
            )
            async with p.connect(proxy_header=header) as client:
                assert (await client.greeting()).code == 220
                replies = await client.send_message("a@x", ["b@x"], MESSAGE)
                assert replies[-1].code == 250
    assert len(up.transactions) == 1


def test_client_info_from_a_header() -> None:
    socket_info = ClientInfo(client="127.0.0.1", local="127.0.0.1")
    result = ProxyResult(
        CLIENT_V6,
        ProxiedClient("2001:db8::7", 40123, "2001:db8::25", 25),
        b"",
    )
    info = from_proxy_header(result, socket_info)
    assert (info.client, info.local, info.is_ipv6) == ("2001:db8::7", "2001:db8::25", True)
    assert (info.client_port, info.local_port) == (40123, 25)  # XCLIENT, XFORWARD (issue 23)
    assert info.original_destination is None  # only asked for by TransparentProxy
    transparent = from_proxy_header(result, socket_info, transparent=True)
    assert transparent.original_destination == ("2001:db8::25", 25)
    # LOCAL names nobody: the connection's own endpoints stay.
    assert from_proxy_header(ProxyResult(LOCAL, None, b""), socket_info) is socket_info


async def test_shutdown_closes_a_connection_still_waiting_for_its_header() -> None:
    config = parse_config("ProxyProtocol: on\nOutAddress: 127.0.0.1:9\nShutdownTimeout: 30\n")
    loopback = Address(AddressKind.TCP, "127.0.0.1", 0, None, "127.0.0.1:0")
    config = attrs.evolve(config, listen=loopback)
    sockets = bind_listeners(config)
    server = Server(config)
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve, sockets)
                port = sockets[0].getsockname()[1]
                async with open_client("127.0.0.1", port) as client:
                    await wait_for_connections(server, 1)
                    server.stop()
                    # Closed at once: the grace period is for sessions, not silent sockets.
                    assert await client.read_eof(timeout=2) == b""
    finally:
        for sock in sockets:
            sock.close()
    assert not server.connections


async def wait_for_connections(server: Server, count: int) -> None:
    while len(server.connections) < count:
        await trio.sleep(0.01)


async def test_the_per_client_limit_counts_the_header_client() -> None:
    # Behind a balancer every connection comes from its address: MaxConnectionsPerClient
    # must count the client the header names, or one client could take every slot (and
    # clients sharing a balancer would be refused together).
    config = (
        "ProxyProtocol: on\nMaxConnectionsPerClient: 1\nConnectionLimitExceptions: none\n"
        "MaxConnections: 10\n"
    )
    other = attrs.evolve(CLIENT_V4, source_address="203.0.113.8")
    with trio.fail_after(10):
        async with (
            FakeUpstream() as up,
            run_proxy(config, upstream=up) as proxy,
            proxy.connect(proxy_header=encode_v2(CLIENT_V4)) as first,
        ):
            assert (await first.greeting()).code == 220
            async with proxy.connect(proxy_header=encode_v2(CLIENT_V4)) as second:
                refused = await second.greeting()
                assert refused.code == 421 and "203.0.113.7" in refused.text
            async with proxy.connect(proxy_header=encode_v2(other)) as third:
                assert (await third.greeting()).code == 220
