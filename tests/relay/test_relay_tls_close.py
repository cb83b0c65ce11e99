"""The end of a TLS session (issue 25, docs/behaviour.md §11.21): the proxy's close sends a
close_notify, to the client and to the next server, and needs none from them.

Both peers here are spec-compliant Trio TLS streams: their read after the proxy's close
returns b"" only for a close_notify, and raises BrokenResourceError (SSLEOFError) for a
bare end of stream, which is what Exim logged as "non-properly terminated"."""

from __future__ import annotations

import logging
import shutil
import ssl
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.config.settings import relay_settings
from trio_proxsmtp.relay.client_info import ClientInfo
from trio_proxsmtp.relay.connection import Connection
from trio_proxsmtp.testing.certs import TestCertificates
from trio_proxsmtp.testing.client import FakeClient


async def read_end(stream: trio.SSLStream[trio.abc.Stream]) -> str:
    """How the peer's side of the TLS session ended."""
    try:
        data = await stream.receive_some(4096)
    except trio.BrokenResourceError:
        return "no close_notify"
    return "close_notify" if data == b"" else f"more data: {data!r}"


class NextServer:
    """A next server over implicit TLS that answers everything 250 (QUIT: 221) and notes
    how the proxy ended the TLS session."""

    def __init__(self, certs: TestCertificates) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(certs.certificate, certs.key)
        self.ends: list[str] = []

    async def handle(self, stream: trio.abc.Stream) -> None:
        tls = trio.SSLStream(stream, self.context, server_side=True)
        await tls.do_handshake()
        await tls.send_all(b"220 next.example ESMTP\r\n")
        buffer = b""
        while True:
            while b"\r\n" not in buffer:
                try:
                    data = await tls.receive_some(4096)
                except trio.BrokenResourceError:
                    self.ends.append("no close_notify")
                    return
                if not data:
                    self.ends.append("close_notify")
                    return
                buffer += data
            line, buffer = buffer.split(b"\r\n", 1)
            reply = b"221 2.0.0 bye" if line.upper() == b"QUIT" else b"250 next.example"
            await tls.send_all(reply + b"\r\n")


@asynccontextmanager
async def tls_both_sides(
    certs: TestCertificates, next_server: NextServer
) -> AsyncIterator[FakeClient]:
    """One Connection on memory streams: STARTTLS offered to the client, implicit TLS to
    `next_server`; the connection's task is over when the block ends."""
    temp = tempfile.mkdtemp(prefix="trio-proxsmtp-test-")
    config = (
        f"TempDirectory: {temp}\nOutAddress: 127.0.0.1:25\nOutTLS: implicit\n"
        f"OutTLSCAFile: {certs.ca}\nTLSCertificate: {certs.certificate}\nTLSKey: {certs.key}\n"
    )
    try:
        ours, theirs = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:

            async def open_upstream() -> tuple[trio.abc.Stream, str]:
                proxy_end, upstream_end = trio.testing.memory_stream_pair()
                nursery.start_soon(next_server.handle, upstream_end)
                return proxy_end, "upstream.memory"

            info = ClientInfo(client="127.0.0.1", local="127.0.0.1")
            connection = Connection(
                relay_settings(parse_config(config)),
                theirs,
                info,
                0x100000,
                open_upstream=open_upstream,
            )
            done = trio.Event()

            async def run() -> None:
                await connection.run()
                done.set()

            nursery.start_soon(run)
            yield FakeClient(ours, timeout=10)
            with trio.fail_after(10):
                await done.wait()
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def test_quit_ends_both_tls_sessions_with_a_close_notify(
    test_certificates: TestCertificates,
) -> None:
    next_server = NextServer(test_certificates)
    async with tls_both_sides(test_certificates, next_server) as client:
        await client.command("EHLO client.example")
        assert (await client.starttls(client_context())).code == 220
        await client.command("EHLO client.example")
        assert (await client.quit()).code == 221
        assert isinstance(client.stream, trio.SSLStream)
        assert await read_end(client.stream) == "close_notify"
    assert next_server.ends == ["close_notify"]


@pytest.mark.parametrize("how", ["close_notify", "bare end of stream"])
async def test_a_client_need_not_send_a_close_notify(
    how: str, test_certificates: TestCertificates, caplog: pytest.LogCaptureFixture
) -> None:
    # A client that leaves mid-session, with or without its own close_notify: the
    # session ends as for a plain close, and the next server still gets ours.
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    next_server = NextServer(test_certificates)
    async with tls_both_sides(test_certificates, next_server) as client:
        await client.command("EHLO client.example")
        assert (await client.starttls(client_context())).code == 220
        await client.command("EHLO client.example")
        tls = client.stream
        assert isinstance(tls, trio.SSLStream)
        if how == "close_notify":
            await tls.aclose()
        else:
            await tls.transport_stream.aclose()
    assert next_server.ends == ["close_notify"]
    assert "client disconnected: closed the connection" in caplog.text
