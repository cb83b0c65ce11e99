"""TLS on the socket itself (common/tls_socket.py, issue 26): the relay's TLS stream keeps
what the relay relied on with `trio.SSLStream` (docs/behaviour.md §11.21) — the bytes, the
ends of a session, the errors, closing, and one reader beside one writer — over real
loopback TCP connections, with a `trio.SSLStream` or another `SocketTLSStream` as the peer.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from trio_proxsmtp.common.tls_socket import SocketTLSStream, is_tls_stream
from trio_proxsmtp.relay.fast_io import FastPath
from trio_proxsmtp.relay.tls_streams import closed_without_notify, tls_stream
from trio_proxsmtp.testing.certs import TestCertificates, make_test_certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TestCertificates:
    return make_test_certificates(tmp_path_factory.mktemp("certs"))


def contexts(certs: TestCertificates) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(certs.certificate), str(certs.key))
    client = ssl.create_default_context(cafile=str(certs.ca))
    return server, client


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """Two ends of one loopback TCP connection, closed afterwards."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        accepted: list[trio.SocketStream] = []

        async def accept() -> None:
            accepted.append(await listeners[0].accept())

        nursery.start_soon(accept)
        client = await trio.open_tcp_stream("127.0.0.1", port)
    await listeners[0].aclose()
    server = accepted[0]
    try:
        yield server, client
    finally:
        await server.aclose()
        await client.aclose()


@asynccontextmanager
async def tls_pair(
    certs: TestCertificates,
) -> AsyncIterator[tuple[SocketTLSStream, trio.SSLStream[trio.SocketStream], trio.SocketStream]]:
    """Ours on the server side, trio's on the client side, handshaken; and the client's
    TCP stream under its TLS."""
    server_context, client_context = contexts(certs)
    async with tcp_pair() as (server_raw, client_raw):
        server = SocketTLSStream(server_raw, server_context, server_side=True)
        client = trio.SSLStream(client_raw, client_context, server_hostname="localhost")
        await handshake(server, client)
        yield server, client, client_raw


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def handshake(a: trio.abc.Stream, b: trio.abc.Stream) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.do_handshake)  # type: ignore[attr-defined]
        nursery.start_soon(b.do_handshake)  # type: ignore[attr-defined]


async def read_all(stream: trio.abc.Stream, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        data = await stream.receive_some(65536)
        assert data, "end of stream before all the bytes came"
        got += data
    return bytes(got)


async def test_tls_on_a_socket_is_ours_and_on_anything_else_trios(certs: TestCertificates) -> None:
    server_context, client_context = contexts(certs)
    async with tcp_pair() as (server, _client):
        ours = tls_stream(server, server_context, server_side=True)
        assert isinstance(ours, SocketTLSStream)
        assert is_tls_stream(ours)
        await ours.aclose()
    memory, _ = trio.testing.memory_stream_pair()
    theirs = tls_stream(memory, client_context, server_hostname="localhost")
    assert isinstance(theirs, trio.SSLStream)
    assert is_tls_stream(theirs)
    assert not is_tls_stream(memory)


@pytest.mark.parametrize("peer_kind", ["trio", "ours"])
async def test_a_megabyte_each_way_at_once_with_details(
    certs: TestCertificates, peer_kind: str
) -> None:
    """Both directions full at once: the sends block on a full socket buffer while the
    other side's reads go on (WANT_WRITE and WANT_READ both taken)."""
    server_context, client_context = contexts(certs)
    payload_up = os.urandom(1 << 20)
    payload_down = os.urandom(1 << 20)
    with trio.fail_after(20):
        async with tcp_pair() as (server_raw, client_raw):
            server = SocketTLSStream(server_raw, server_context, server_side=True)
            client: trio.abc.Stream
            if peer_kind == "trio":
                client = trio.SSLStream(client_raw, client_context, server_hostname="localhost")
            else:
                client = SocketTLSStream(client_raw, client_context, server_hostname="localhost")
            await handshake(server, client)
            assert server.version() in ("TLSv1.3", "TLSv1.2")
            cipher = server.cipher()
            assert cipher is not None and cipher[2] >= 128
            assert server.getpeercert() in (None, {})  # no client certificate asked for
            received: dict[str, bytes] = {}

            async def up() -> None:
                await client.send_all(payload_up)

            async def down() -> None:
                await server.send_all(payload_down)

            async def read_up() -> None:
                received["up"] = await read_all(server, len(payload_up))

            async def read_down() -> None:
                received["down"] = await read_all(client, len(payload_down))

            async with trio.open_nursery() as nursery:
                for task in (up, down, read_up, read_down):
                    nursery.start_soon(task)
            assert received == {"up": payload_up, "down": payload_down}
            await server.aclose()
            await client.aclose()


async def test_plain_text_buffered_in_openssl_is_read_without_waiting(
    certs: TestCertificates,
) -> None:
    """One record read in small pieces: the later pieces are in OpenSSL, not the socket;
    a stream that waited for the socket first would hang here."""
    with trio.fail_after(5):
        async with tls_pair(certs) as (server, client, _client_raw):
            await client.send_all(b"0123456789" * 20)
            pieces = [await server.receive_some(50) for _ in range(4)]
            assert b"".join(pieces) == b"0123456789" * 20
            await server.aclose()


async def test_the_peers_close_notify_is_end_of_stream_and_ours_reaches_it(
    certs: TestCertificates,
) -> None:
    with trio.fail_after(5):
        async with tls_pair(certs) as (server, client, _client_raw):
            await client.aclose()  # trio's spec-compliant close: a close_notify
            assert await server.receive_some(100) == b""
            assert await server.receive_some(100) == b""  # and it stays ended

        async with tls_pair(certs) as (server, client, _client_raw):
            await server.aclose()
            # trio raises BrokenResourceError for an end without a close_notify.
            assert await client.receive_some(100) == b""


async def test_a_bare_close_is_broken_and_told_from_a_reset(certs: TestCertificates) -> None:
    with trio.fail_after(5):
        async with tls_pair(certs) as (server, client, client_raw):
            await server.send_all(b"220 ok\r\n")  # (read with TLS 1.3's tickets before it:
            assert await client.receive_some(100) == b"220 ok\r\n"  # unread, a reset)
            await client_raw.aclose()  # no close_notify
            with pytest.raises(trio.BrokenResourceError) as caught:
                await server.receive_some(100)
            assert closed_without_notify(caught.value)
            with pytest.raises(trio.BrokenResourceError):
                await server.send_all(b"after the end")  # it stays broken
            await server.aclose()

        async with tls_pair(certs) as (server, client, client_raw):
            client_raw.socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            await client_raw.aclose()  # a reset
            with pytest.raises(trio.BrokenResourceError) as caught:
                await server.receive_some(100)
            assert not closed_without_notify(caught.value)
            await server.aclose()


async def test_close_ends_the_connection_frees_both_descriptors_and_wakes_a_reader(
    certs: TestCertificates,
) -> None:
    server_context, client_context = contexts(certs)
    with trio.fail_after(5):
        async with tcp_pair() as (server_raw, client_raw):
            before = open_descriptors()
            server = SocketTLSStream(server_raw, server_context, server_side=True)
            assert open_descriptors() == before + 1  # its own descriptor of the connection
            client = trio.SSLStream(client_raw, client_context, server_hostname="localhost")
            await handshake(server, client)
            outcome: list[str] = []

            async def reader() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await server.receive_some(100)
                outcome.append("woken")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                await server.aclose()
            assert outcome == ["woken"]
            assert open_descriptors() == before - 1  # the transport's closed too
            assert await client.receive_some(100) == b""
            assert await client_raw.receive_some(100) == b""  # then the TCP end
            with pytest.raises(trio.ClosedResourceError):
                await server.receive_some(100)
            with pytest.raises(trio.ClosedResourceError):
                await server.send_all(b"x")
            await server.aclose()  # twice is fine


async def test_a_failed_or_abandoned_handshake_lets_its_descriptor_go_at_once(
    certs: TestCertificates,
) -> None:
    """Without this the connection outlives the transport's close: the failed stream's
    own descriptor keeps it open until garbage collection."""
    server_context, _ = contexts(certs)
    with trio.fail_after(5):
        async with tcp_pair() as (server_raw, client_raw):
            before = open_descriptors()
            server = SocketTLSStream(server_raw, server_context, server_side=True)
            await client_raw.send_all(b"this is not a TLS client hello\r\n" * 4)
            with pytest.raises(trio.BrokenResourceError) as caught:
                await server.do_handshake()
            assert isinstance(caught.value.__cause__, ssl.SSLError)
            assert open_descriptors() == before
            await server_raw.aclose()
            # What OpenSSL left unread was read away: a plain close, not a reset.
            assert await client_raw.receive_some(100) == b""

        async with tcp_pair() as (server_raw, client_raw):
            before = open_descriptors()
            server = SocketTLSStream(server_raw, server_context, server_side=True)
            with trio.move_on_after(0.05):
                await server.do_handshake()  # the client says nothing
            assert open_descriptors() == before
            with pytest.raises(trio.BrokenResourceError):
                await server.receive_some(10)
            await server.aclose()


async def test_the_fast_path_reads_and_writes_tls_without_waiting(
    certs: TestCertificates,
) -> None:
    """relay/fast_io.py: TLS on a socket takes the optimistic calls, and a read that would
    block waits for what OpenSSL asked for."""
    with trio.fail_after(5):
        async with tls_pair(certs) as (server, client, _client_raw):
            fast = FastPath()
            assert await fast.receive(server, 100) is None  # nothing yet: would block
            assert await fast.send(server, b"250 ok\r\n") == len(b"250 ok\r\n")
            assert await client.receive_some(100) == b"250 ok\r\n"

            async def later() -> None:
                await trio.sleep(0.01)
                await client.send_all(b"QUIT\r\n")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(later)
                assert await fast.receive_waiting(server, 100) == b"QUIT\r\n"
            await client.send_all(b"NOOP\r\n")
            await trio.sleep(0.01)
            assert await fast.receive(server, 100) == b"NOOP\r\n"
            await server.aclose()


async def test_a_context_that_refuses_to_wrap_leaves_no_descriptor(
    certs: TestCertificates,
) -> None:
    _, client_context = contexts(certs)  # it checks host names: it needs one
    async with tcp_pair() as (_server_raw, client_raw):
        before = open_descriptors()
        with pytest.raises(ValueError) as caught:
            SocketTLSStream(client_raw, client_context)
        # Closed at once, not when the error (which keeps the frames alive) is collected.
        assert caught.value.__traceback__ is not None
        assert open_descriptors() == before
