"""Issue 23 through the relay: what the next server hears about the client.  XCLIENT with
every listed attribute from the accepted socket (the client's port, the address and port it
connected to); no XCLIENT or XFORWARD value or line the next server must refuse ever goes
out; under `XForward: on` the proxy's XFORWARD goes before each MAIL and a forged one from
the client is refused; `OutProxyProtocol` opens the next-hop connection with a header the
parser reads back (docs/behaviour.md §11.12, §11.13)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from trio_proxsmtp.common.log import connection_logger
from trio_proxsmtp.protocol.proxy_header import ParsedProxyHeader, ProxyCommand, ProxyHeaderParser
from trio_proxsmtp.protocol.smtp.commands import xtext_decode
from trio_proxsmtp.relay.client_info import ClientInfo
from trio_proxsmtp.relay.settings import OutProxyProtocol, UpstreamSettings
from trio_proxsmtp.relay.upstream import Upstream
from trio_proxsmtp.testing import FakeUpstream, RunningProxy, Session, run_proxy

EVERY_XCLIENT = "XCLIENT ADDR PORT NAME HELO PROTO DESTADDR DESTPORT LOGIN"
EVERY_XFORWARD = "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE"
KEYWORDS = ["PIPELINING", "SIZE 10240000", EVERY_XCLIENT, EVERY_XFORWARD, "8BITMIME"]


MESSAGE = b"Subject: t\r\n\r\nbody\r\n"


@asynccontextmanager
async def proxied(
    config: str, up: FakeUpstream
) -> AsyncIterator[tuple[FakeUpstream, RunningProxy]]:
    """`up` and the proxy (real loopback sockets) in front of it."""
    with tempfile.TemporaryDirectory(prefix="trio-proxsmtp-identity-") as temp:
        async with up, run_proxy(f"TempDirectory: {temp}\n{config}", upstream=up) as proxy:
            yield up, proxy


def attributes(line: bytes) -> dict[str, str]:
    pairs = line.decode("ascii").split()[1:]
    return {name: xtext_decode(value) for name, _, value in (p.partition("=") for p in pairs)}


def postfix_limits(line: bytes, session: Session | None = None) -> str | None:
    """XCLIENT/XFORWARD as Postfix 3.7's smtpd checks them: the line within 512 bytes, each
    value within 255 bytes as sent (xtext-encoded), PORT= a number; else its refusal."""
    if len(line) + 2 > 512:
        return "500 5.5.2 Error: line too long"
    for pair in line.decode("ascii").split()[1:]:
        if len(pair.partition("=")[2]) > 255:
            return "501 5.5.4 Error: attribute value too long"
    for name, value in attributes(line).items():
        if name in ("PORT", "DESTPORT") and not (value.isdigit() or value == "[UNAVAILABLE]"):
            return f"501 5.5.4 Bad {name} syntax"
    return None  # the fake's own reply


def sent(up: FakeUpstream, verb: bytes) -> list[bytes]:
    return [c for c in up.commands if c.upper().startswith(verb)]


async def test_xclient_carries_the_sockets_ports_and_destination() -> None:
    up = FakeUpstream(ehlo_keywords=KEYWORDS)
    with trio.fail_after(20):
        async with proxied("XClient: on", up) as (_, proxy), proxy.connect() as client:
            replies = await client.send_message("s@x", ["r@x"], MESSAGE, helo="c.example")
            assert [r.code for r in replies] == [250, 250, 354, 250]
            stream = client.stream
            assert isinstance(stream, trio.SocketStream)
            port = stream.socket.getsockname()[1]
    [line] = sent(up, b"XCLIENT")
    got = attributes(line)
    assert got["ADDR"] == "127.0.0.1" and got["PORT"] == str(port)
    assert got["DESTADDR"] == "127.0.0.1" and got["DESTPORT"] == str(proxy.port)
    assert got["PROTO"] == "ESMTP" and got["HELO"] == "c.example"
    assert "LOGIN" not in got


UNAVAILABLE = "[UNAVAILABLE]"


@pytest.mark.parametrize(
    ("helo", "expected"),
    [
        ("a" * 300, UNAVAILABLE),
        ("\u00e9" * 42, "\u00e9" * 42),  # 84 bytes, 252 encoded
        ("\u00e9" * 43, UNAVAILABLE),  # 86 bytes, but 258 encoded
        ("b" * 255, "b" * 255),
    ],
    ids=["over-255", "8-bit-252-encoded", "8-bit-258-encoded", "255-bytes"],
)
async def test_no_overlong_value_or_line_ever_goes_out(helo: str, expected: str) -> None:
    up = FakeUpstream(
        ehlo_keywords=KEYWORDS, replies={"XCLIENT": postfix_limits, "XFORWARD": postfix_limits}
    )
    with trio.fail_after(20):
        async with (
            proxied("XClient: on\nXForward: on", up) as (_, proxy),
            proxy.connect() as client,
        ):
            replies = await client.send_message("s@x", ["r@x"], MESSAGE, helo=helo)
            assert [r.code for r in replies] == [250, 250, 354, 250]
    assert [t.message for t in up.transactions] == [MESSAGE]
    ours = sent(up, b"XCLIENT") + sent(up, b"XFORWARD")
    assert sent(up, b"XCLIENT") and sent(up, b"XFORWARD")
    for line in ours:
        assert len(line) + 2 <= 512
        assert postfix_limits(line) is None
    helos = {attributes(line)["HELO"] for line in ours if b" HELO=" in line}
    assert helos == {expected}


async def test_forged_client_xforward_refused_and_ours_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    up = FakeUpstream(ehlo_keywords=KEYWORDS)
    with trio.fail_after(20):
        async with proxied("XForward: on", up) as (_, proxy), proxy.connect() as client:
            ehlo = await client.command("EHLO c.example")
            assert not any(line.startswith("XFORWARD") for line in ehlo.lines)
            forged = await client.command("XFORWARD ADDR=6.6.6.6 NAME=trusted.example")
            assert forged.code == 554
            replies = await client.send_message("s@x", ["r@x"], MESSAGE, helo="c.example")
            assert [r.code for r in replies] == [250, 250, 354, 250]
    lines = sent(up, b"XFORWARD")
    assert all(b"6.6.6.6" not in line for line in up.commands)
    assert lines, "the proxy's own XFORWARD went before MAIL"
    for line in lines:
        got = attributes(line)
        assert got["ADDR"] == "127.0.0.1" and got["SOURCE"] == "LOCAL"
        assert got["PROTO"] == "ESMTP" and got["HELO"] == "c.example" and got["PORT"].isdigit()
    assert "refused the client's XFORWARD" in caplog.text


@pytest.mark.parametrize(("mode", "version"), [(OutProxyProtocol.V1, 1), (OutProxyProtocol.V2, 2)])
async def test_out_proxy_protocol_header_opens_the_next_hop_connection(
    mode: OutProxyProtocol, version: int
) -> None:
    ours, theirs = trio.testing.memory_stream_pair()

    async def opener() -> tuple[trio.abc.Stream, str]:
        return ours, "upstream.memory"

    info = ClientInfo(client="203.0.113.9", local="192.0.2.10", client_port=40123, local_port=25)
    upstream = Upstream(
        UpstreamSettings(None, proxy_protocol=mode), info, connection_logger(1), opener
    )
    with trio.fail_after(5):
        await upstream.connect()
        await theirs.send_all(b"220 next ESMTP\r\n")
        [banner] = await upstream.exchange((), replies=1)
        assert banner.code == 220
        parser = ProxyHeaderParser()
        result = parser.feed(await theirs.receive_some())
    assert isinstance(result, ParsedProxyHeader) and result.remainder == b""
    header = result.header
    assert header.version == version and header.command is ProxyCommand.PROXY
    assert (header.source_address, header.source_port) == ("203.0.113.9", 40123)
    assert (header.destination_address, header.destination_port) == ("192.0.2.10", 25)


async def test_out_proxy_protocol_off_sends_nothing_first() -> None:
    ours, theirs = trio.testing.memory_stream_pair()

    async def opener() -> tuple[trio.abc.Stream, str]:
        return ours, "upstream.memory"

    info = ClientInfo(client="203.0.113.9", local="192.0.2.10", client_port=40123, local_port=25)
    upstream = Upstream(UpstreamSettings(None), info, connection_logger(1), opener)
    with trio.fail_after(5):
        await upstream.connect()
        await upstream.send(b"EHLO x\r\n")
        assert await theirs.receive_some() == b"EHLO x\r\n"
